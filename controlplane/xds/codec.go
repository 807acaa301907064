package xds

import (
	"fmt"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the fallback codec
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// ServerOptions are the gRPC server options the xDS server wants: a codec
// that sends each resource's encoded bytes (encoded once, in the cache) by
// reference instead of copying them into every stream's message.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(NewCodec())}
}

// sharedMin: responses with fewer resource bytes are marshalled the usual
// way (one small copy is cheaper than a buffer per resource).
const sharedMin = 8 << 10

// codec is gRPC's proto codec, except that xDS responses are framed around
// their resources' bytes rather than copied: go-control-plane's caches
// marshal a resource once and every response carries those very bytes in
// its Any.value, so a thousand streams sending the same 0.6 MB state hold
// (and wait for flow control with) a thousand small headers, not a
// thousand copies. The wire bytes are a valid encoding of the same message
// (fields may come in another order, which protobuf parsers accept).
type codec struct{ proto encoding.CodecV2 }

// NewCodec returns the xDS server codec (see ServerOptions).
func NewCodec() encoding.CodecV2 { return codec{proto: encoding.GetCodecV2("proto")} }

func (codec) Name() string { return "proto" }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *discoveryv3.DiscoveryResponse:
		if anyBytes(m.GetResources()) >= sharedMin {
			return marshalShared(m, "resources", len(m.GetResources()), func(i int) (*anypb.Any, proto.Message) {
				return m.GetResources()[i], nil
			})
		}
	case *discoveryv3.DeltaDiscoveryResponse:
		if deltaBytes(m.GetResources()) >= sharedMin {
			return marshalShared(m, "resources", len(m.GetResources()), func(i int) (*anypb.Any, proto.Message) {
				return m.GetResources()[i].GetResource(), m.GetResources()[i]
			})
		}
	}
	return c.proto.Marshal(v)
}

func anyBytes(rs []*anypb.Any) int {
	n := 0
	for _, r := range rs {
		n += len(r.GetValue())
	}
	return n
}

func deltaBytes(rs []*discoveryv3.Resource) int {
	n := 0
	for _, r := range rs {
		n += len(r.GetResource().GetValue())
	}
	return n
}

// without returns a shallow copy of m with the named field cleared.
func without(m proto.Message, field protoreflect.Name) (proto.Message, protoreflect.FieldNumber) {
	src := m.ProtoReflect()
	fd := src.Descriptor().Fields().ByName(field)
	dst := src.New()
	src.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if f != fd {
			dst.Set(f, v)
		}
		return true
	})
	dst.SetUnknown(src.GetUnknown())
	return dst.Interface(), fd.Number()
}

var (
	resFields   = (&discoveryv3.Resource{}).ProtoReflect().Descriptor().Fields()
	resName     = resFields.ByName("name")
	resVersion  = resFields.ByName("version")
	resResource = resFields.ByName("resource")
)

// marshalWithout encodes m without the named field and returns that
// field's number. A delta Resource holding only name, version and resource
// (what the caches send) is encoded directly: the generic path below costs
// more than the rest of a 1,000-client push.
func marshalWithout(m proto.Message, field protoreflect.Name) ([]byte, protoreflect.FieldNumber, error) {
	if r, ok := m.(*discoveryv3.Resource); ok && field == resResource.Name() && plainResource(r) {
		b := make([]byte, 0, len(r.GetName())+len(r.GetVersion())+8)
		if v := r.GetVersion(); v != "" {
			b = protowire.AppendTag(b, resVersion.Number(), protowire.BytesType)
			b = protowire.AppendString(b, v)
		}
		if n := r.GetName(); n != "" {
			b = protowire.AppendTag(b, resName.Number(), protowire.BytesType)
			b = protowire.AppendString(b, n)
		}
		return b, resResource.Number(), nil
	}
	rest, num := without(m, field)
	b, err := proto.MarshalOptions{}.Marshal(rest)
	return b, num, err
}

// plainResource: r sets no field but name, version and resource (the
// getters are checked one by one: reflection costs more than the rest of
// the encoding; TestPlainResourceKnowsEveryField fails when Resource grows
// a field this does not check).
func plainResource(r *discoveryv3.Resource) bool {
	return r.GetResourceName() == nil && r.GetAliases() == nil && r.GetTtl() == nil &&
		r.GetCacheControl() == nil && r.GetMetadata() == nil && len(r.ProtoReflect().GetUnknown()) == 0
}

// marshalShared encodes m with its repeated message field `field` written
// element by element: element i is either an Any (wrapper == nil) or a
// wrapper message whose "resource" field holds that Any.
func marshalShared(m proto.Message, field protoreflect.Name, n int, elem func(i int) (*anypb.Any, proto.Message)) (mem.BufferSlice, error) {
	rest, num := without(m, field)
	hdr, err := proto.MarshalOptions{}.Marshal(rest)
	if err != nil {
		return nil, fmt.Errorf("xds codec: %w", err)
	}
	first := len(hdr)
	hdr = slices.Grow(hdr, n*64)
	// Every header goes into one growing buffer; segments are cut from
	// it once it stops moving (at the end), so offsets are recorded.
	type seg struct {
		from, to int
		value    []byte
	}
	segs := make([]seg, 0, n)
	for i := range n {
		a, wrapper := elem(i)
		start := len(hdr)
		anyLen := 0
		if a != nil {
			anyLen = anyHeaderLen(a) + len(a.GetValue())
		}
		if wrapper == nil {
			hdr = protowire.AppendTag(hdr, num, protowire.BytesType)
			hdr = protowire.AppendVarint(hdr, uint64(anyLen))
		} else {
			wb, wnum, err := marshalWithout(wrapper, "resource")
			if err != nil {
				return nil, fmt.Errorf("xds codec: %w", err)
			}
			inner := len(wb)
			if a != nil {
				inner += protowire.SizeTag(wnum) + protowire.SizeBytes(anyLen)
			}
			hdr = protowire.AppendTag(hdr, num, protowire.BytesType)
			hdr = protowire.AppendVarint(hdr, uint64(inner))
			hdr = append(hdr, wb...)
			if a == nil {
				segs = append(segs, seg{start, len(hdr), nil})
				continue
			}
			hdr = protowire.AppendTag(hdr, wnum, protowire.BytesType)
			hdr = protowire.AppendVarint(hdr, uint64(anyLen))
		}
		hdr = appendAnyHeader(hdr, a)
		segs = append(segs, seg{start, len(hdr), a.GetValue()})
	}
	out := make(mem.BufferSlice, 0, 2*n+1)
	if first > 0 {
		out = append(out, mem.SliceBuffer(hdr[:first]))
	}
	for _, s := range segs {
		out = append(out, mem.SliceBuffer(hdr[s.from:s.to]))
		if len(s.value) > 0 {
			out = append(out, mem.SliceBuffer(s.value))
		}
	}
	return out, nil
}

// anyHeaderLen is the encoded size of an Any minus its value's bytes.
func anyHeaderLen(a *anypb.Any) int {
	if a == nil {
		return 0
	}
	n := 0
	if u := a.GetTypeUrl(); u != "" {
		n += protowire.SizeTag(1) + protowire.SizeBytes(len(u))
	}
	if v := a.GetValue(); len(v) > 0 {
		n += protowire.SizeTag(2) + protowire.SizeVarint(uint64(len(v)))
	}
	return n + len(a.ProtoReflect().GetUnknown())
}

// appendAnyHeader appends an Any's encoding up to (not including) its
// value's bytes, which the caller sends by reference.
func appendAnyHeader(b []byte, a *anypb.Any) []byte {
	if a == nil {
		return b
	}
	b = append(b, a.ProtoReflect().GetUnknown()...)
	if u := a.GetTypeUrl(); u != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, u)
	}
	if v := a.GetValue(); len(v) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(v)))
	}
	return b
}
