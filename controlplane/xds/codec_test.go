package xds

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// anys: the 500 × 10 CLAs, marshalled once as the caches do.
func anys(t *testing.T) []*anypb.Any {
	t.Helper()
	out := mustBuild(t, perfModel(500, 10, 0))
	var rs []*anypb.Any
	for _, name := range slices.Sorted(maps.Keys(out.Endpoints)) {
		b, err := cachev3.MarshalResource(types.Resource(out.Endpoints[name]))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, &anypb.Any{TypeUrl: resourcev3.EndpointType, Value: b})
	}
	return rs
}

// roundTrip marshals with the codec, decodes with plain protobuf, and
// checks the message is the same and every resource's bytes were sent by
// reference (a buffer of the slice is the resource's own backing array).
func roundTrip(t *testing.T, in, out proto.Message, values [][]byte) {
	t.Helper()
	data, err := NewCodec().Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(data.Materialize(), out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("decoded message differs:\n in %v\nout %v", in, out)
	}
	if got, want := data.Len(), proto.Size(in); got != want {
		t.Errorf("encoded %d bytes, proto.Size says %d", got, want)
	}
	shared := map[*byte]bool{}
	for _, b := range data {
		if d := b.ReadOnlyData(); len(d) > 0 {
			shared[&d[0]] = true
		}
	}
	for i, v := range values {
		if !shared[&v[0]] {
			t.Fatalf("resource %d was copied, not sent by reference", i)
		}
	}
}

func TestCodecSharesResourceBytes(t *testing.T) {
	rs := anys(t)
	var values [][]byte
	for _, a := range rs {
		values = append(values, a.GetValue())
	}
	t.Run("sotw", func(t *testing.T) {
		in := &discoveryv3.DiscoveryResponse{
			VersionInfo: "v-1", Resources: rs, TypeUrl: resourcev3.EndpointType, Nonce: "7",
			ControlPlane: &corev3.ControlPlane{Identifier: "cp"},
		}
		roundTrip(t, in, &discoveryv3.DiscoveryResponse{}, values)
	})
	t.Run("delta", func(t *testing.T) {
		in := &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: "v-2", TypeUrl: resourcev3.EndpointType, Nonce: "8",
			RemovedResources: []string{"gone-a", "gone-b"},
		}
		for i, a := range rs {
			r := &discoveryv3.Resource{Name: fmt.Sprintf("svc-%d", i), Version: fmt.Sprintf("h%d", i), Resource: a}
			if i%7 == 0 {
				r.Aliases = []string{"alias"}
				r.ResourceName = &discoveryv3.ResourceName{Name: r.Name}
				r.Ttl = durationpb.New(time.Second)
				r.CacheControl = &discoveryv3.Resource_CacheControl{DoNotCache: true}
				r.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"k": {}}}
			}
			in.Resources = append(in.Resources, r)
		}
		// A resource without a body (a TTL heartbeat) round-trips too.
		in.Resources = append(in.Resources, &discoveryv3.Resource{Name: "heartbeat", Version: "h"})
		roundTrip(t, in, &discoveryv3.DeltaDiscoveryResponse{}, values)
	})
	t.Run("small responses and requests use plain protobuf", func(t *testing.T) {
		in := &discoveryv3.DiscoveryResponse{Resources: rs[:1], TypeUrl: resourcev3.EndpointType}
		data, err := NewCodec().Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := proto.Marshal(in)
		if !bytes.Equal(data.Materialize(), want) {
			t.Error("a small response is not plain protobuf")
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: "v"}
		data, err = NewCodec().Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DiscoveryRequest{}
		if err := NewCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(data.Materialize())}, got); err != nil || !proto.Equal(got, req) {
			t.Errorf("request round trip: %v %v", got, err)
		}
	})
}

// Over a real gRPC connection, big SotW and delta responses (framed around
// the cached resource bytes) decode to exactly what was translated.
func TestCodecOverGRPC(t *testing.T) {
	e := startServer(t)
	out := e.apply(perfModel(500, 10, 0), nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	names := slices.Sorted(maps.Keys(out.Endpoints))
	check := func(mode string, got []*anypb.Any) {
		t.Helper()
		if len(got) != len(names) {
			t.Fatalf("%s: %d CLAs, want %d", mode, len(got), len(names))
		}
		for _, a := range got {
			cla := &endpointv3.ClusterLoadAssignment{}
			if err := a.UnmarshalTo(cla); err != nil {
				t.Fatalf("%s: %v", mode, err)
			}
			if want := out.Endpoints[cla.GetClusterName()]; !proto.Equal(cla, want) {
				t.Fatalf("%s: CLA %s differs from the translation", mode, cla.GetClusterName())
			}
		}
	}

	sotw, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "codec-client"}
	if err := sotw.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	r, err := sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	check("sotw", r.GetResources())

	delta, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names}); err != nil {
		t.Fatal(err)
	}
	d, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []*anypb.Any
	for _, res := range d.GetResources() {
		got = append(got, res.GetResource())
	}
	check("delta", got)
}

// plainResource checks fields by name; a Resource field it does not know
// would be dropped by the fast path, so the field list is pinned here.
func TestPlainResourceKnowsEveryField(t *testing.T) {
	var got []string
	fs := (&discoveryv3.Resource{}).ProtoReflect().Descriptor().Fields()
	for i := range fs.Len() {
		got = append(got, string(fs.Get(i).Name()))
	}
	slices.Sort(got)
	want := []string{"aliases", "cache_control", "metadata", "name", "resource", "resource_name", "ttl", "version"}
	if !slices.Equal(got, want) {
		t.Fatalf("discovery.v3.Resource fields are %v; plainResource knows %v: teach it the new ones", got, want)
	}
}
