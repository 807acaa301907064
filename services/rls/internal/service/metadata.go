package service

import (
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// dynamicMetadata builds RateLimitResponse.dynamic_metadata in the shape
// envoyproxy/ratelimit uses with RESPONSE_DYNAMIC_METADATA=true:
//
//	domain:      the request's domain
//	descriptors: one struct per request descriptor, in order:
//	             entries: ["key=value", ...]
//	             limit:   the descriptor's limit override, in protobuf text
//	                      format (only when the request carries one)
//	             hitsAddend: the descriptor's hits_addend (only when set)
//	hitsAddend:  the request's hits_addend (only when not 0)
//	metadata:    the rule metadata of every descriptor that passed (status
//	             OK, not unlimited, not replaced), merged in request order:
//	             a key already present keeps its first value, except that
//	             two structs are merged key by key (only when non-empty)
//
// Envoy stores it under the filter's namespace (envoy.filters.http.ratelimit)
// for routing, access logs and later filters. slots may be nil (no rule
// applied).
func dynamicMetadata(req *rlsv3.RateLimitRequest, slots []slot, statuses []*rlsv3.RateLimitResponse_DescriptorStatus) *structpb.Struct {
	fields := map[string]*structpb.Value{
		"domain": structpb.NewStringValue(req.GetDomain()),
	}
	descs := make([]*structpb.Value, 0, len(req.GetDescriptors()))
	for _, d := range req.GetDescriptors() {
		descs = append(descs, structpb.NewStructValue(descriptorStruct(d)))
	}
	fields["descriptors"] = structpb.NewListValue(&structpb.ListValue{Values: descs})
	if h := req.GetHitsAddend(); h != 0 {
		fields["hitsAddend"] = structpb.NewNumberValue(float64(h))
	}
	var merged map[string]*structpb.Value
	for i := range slots {
		l := slots[i].limit
		if l == nil || l.Unlimited || l.Metadata == nil || statuses[i].GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
			continue
		}
		if merged == nil {
			merged = make(map[string]*structpb.Value, len(l.Metadata.GetFields()))
		}
		mergeFields(merged, l.Metadata)
	}
	if len(merged) > 0 {
		fields["metadata"] = structpb.NewStructValue(&structpb.Struct{Fields: merged})
	}
	return &structpb.Struct{Fields: fields}
}

func descriptorStruct(d *rlcommon.RateLimitDescriptor) *structpb.Struct {
	entries := make([]*structpb.Value, 0, len(d.GetEntries()))
	for _, e := range d.GetEntries() {
		entries = append(entries, structpb.NewStringValue(e.GetKey()+"="+e.GetValue()))
	}
	f := map[string]*structpb.Value{"entries": structpb.NewListValue(&structpb.ListValue{Values: entries})}
	if o := d.GetLimit(); o != nil {
		f["limit"] = structpb.NewStringValue(o.String())
	}
	if h := d.GetHitsAddend(); h != nil {
		f["hitsAddend"] = structpb.NewNumberValue(float64(h.GetValue()))
	}
	return &structpb.Struct{Fields: f}
}

// mergeFields adds src's fields to dst (owned by the response): a new key
// refers to the rule's value (rules are immutable and protobuf messages are
// safe to marshal concurrently), an existing key keeps dst's value unless
// both are structs, which are merged into a fresh struct the same way, so
// the rules' shared metadata is never modified.
func mergeFields(dst map[string]*structpb.Value, src *structpb.Struct) {
	for k, v := range src.GetFields() {
		cur, ok := dst[k]
		if !ok {
			dst[k] = v
			continue
		}
		cs, ss := cur.GetStructValue(), v.GetStructValue()
		if cs == nil || ss == nil {
			continue
		}
		m := make(map[string]*structpb.Value, len(cs.GetFields())+len(ss.GetFields()))
		for ck, cv := range cs.GetFields() {
			m[ck] = cv
		}
		mergeFields(m, ss)
		dst[k] = structpb.NewStructValue(&structpb.Struct{Fields: m})
	}
}
