package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/controlplane/internal/xdstest"
	"github.com/sidemesh/sidemesh/controlplane/model"
	"github.com/sidemesh/sidemesh/controlplane/translate"
	"github.com/sidemesh/sidemesh/internal/grpcserver"
)

// testLog is quiet unless a test fails; NACK warnings are expected here.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type env struct {
	t    *testing.T
	srv  *Server
	addr string
	ctx  context.Context
}

func startServer(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := New(ctx, testLog(t), prometheus.NewRegistry())
	g := grpcserver.New(ServerOptions()...)
	s.Register(g.Server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return &env{t: t, srv: s, addr: ln.Addr().String(), ctx: ctx}
}

// apply parses a model and serves it.
func (e *env) apply(yaml string, health translate.Health) *translate.Output {
	e.t.Helper()
	out := e.build(yaml, health)
	if err := e.srv.Apply(e.ctx, out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// build parses and translates a model.
func (e *env) build(yaml string, health translate.Health) *translate.Output {
	e.t.Helper()
	m, err := model.Parse(model.Source{Name: "test.yaml", Data: []byte(yaml)})
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := translate.Build(m, health)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func client(e *env, node, target string) *grpc.ClientConn {
	return xdstest.Client(e.t, e.addr, node, target)
}

func twoServiceModel(aAddr, bAddr, routes string) string {
	return fmt.Sprintf(`
services:
  - name: a
    protocol: grpc
    endpoints: [{address: %s, port: %s, zone: zone-a}]
  - name: b
    protocol: grpc
    endpoints: [{address: %s, port: %s, zone: zone-a}]
routes:
  - name: greeter
    hosts: [greeter]
    http:
%s`, hostOf(aAddr), portOf(aAddr), hostOf(bAddr), portOf(bAddr), routes)
}

func hostOf(a string) string { h, _, _ := net.SplitHostPort(a); return h }
func portOf(a string) string { _, p, _ := net.SplitHostPort(a); return p }

func TestProxylessWeightedSplitAndCanary(t *testing.T) {
	e := startServer(t)
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	e.apply(twoServiceModel(a, b, `
      - match: {prefix: /}
        route: [{service: a, weight: 80}, {service: b, weight: 20}]
`), nil)
	cc := client(e, "grpc-client-1", "greeter")
	counts := map[string]int{}
	for i := 0; i < 1000; i++ {
		p, err := xdstest.Call(e.ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		counts[p]++
	}
	// Binomial(1000, 0.8): sd ~ 12.6, so 700..900 is far beyond 6 sd.
	if counts[a] < 700 || counts[a] > 900 || counts[a]+counts[b] != 1000 {
		t.Fatalf("80/20 split gave a=%d b=%d", counts[a], counts[b])
	}
	t.Logf("80/20 split over 1000 RPCs: a=%d b=%d", counts[a], counts[b])

	// Header canary: x-canary: 1 goes to b, everything else to a.
	e.apply(twoServiceModel(a, b, `
      - match: {prefix: /, headers: [{name: x-canary, exact: "1"}]}
        route: [{service: b}]
      - match: {prefix: /}
        route: [{service: a}]
`), nil)
	// The old 80/20 split also sends a canary call to b now and then, so wait
	// until a run of calls routes as only the new config would.
	xdstest.Eventually(t, "canary route", func() bool {
		for i := 0; i < 10; i++ {
			if p, err := xdstest.Call(e.ctx, cc, "x-canary", "1"); err != nil || p != b {
				return false
			}
			if p, err := xdstest.Call(e.ctx, cc); err != nil || p != a {
				return false
			}
		}
		return true
	})
	for i := 0; i < 20; i++ {
		if p, _ := xdstest.Call(e.ctx, cc, "x-canary", "1"); p != b {
			t.Fatalf("canary request went to %s", p)
		}
		if p, _ := xdstest.Call(e.ctx, cc); p != a {
			t.Fatalf("plain request went to %s", p)
		}
	}
}

func TestEndpointMovePushesOnlyEDS(t *testing.T) {
	e := startServer(t)
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	e.apply(twoServiceModel(a, b, `
      - match: {prefix: /}
        route: [{service: a}]
`), nil)
	cc := client(e, "grpc-client-2", "greeter")
	if p, err := xdstest.Call(e.ctx, cc); err != nil || p != a {
		t.Fatalf("first call: %s %v", p, err)
	}
	before := e.responses(t, "grpc-client-2")
	// Service a's only endpoint moves to backend b's address.
	e.apply(twoServiceModel(b, b, `
      - match: {prefix: /}
        route: [{service: a}]
`), nil)
	start := time.Now()
	xdstest.Eventually(t, "traffic to move", func() bool {
		p, err := xdstest.Call(e.ctx, cc)
		return err == nil && p == b
	})
	t.Logf("traffic moved %v after the endpoint change", time.Since(start))
	after := e.responses(t, "grpc-client-2")
	for _, typ := range []string{"Listener", "RouteConfiguration", "Cluster"} {
		if after[typ] != before[typ] {
			t.Errorf("%s was re-sent on an endpoint-only change: %d -> %d", typ, before[typ], after[typ])
		}
	}
	if after["ClusterLoadAssignment"] <= before["ClusterLoadAssignment"] {
		t.Errorf("no EDS push: %v -> %v", before, after)
	}
}

// responses is the per-type response count of the node's stream.
func (e *env) responses(t *testing.T, node string) map[string]int {
	t.Helper()
	var out map[string]int
	xdstest.Eventually(t, "client "+node+" connected", func() bool {
		for _, c := range e.srv.Tracker().Clients() {
			if c.Node == node {
				out = map[string]int{}
				for typ, st := range c.Types {
					out[typ] = st.Responses
				}
				return true
			}
		}
		return false
	})
	return out
}

func TestNACKDoesNotLoop(t *testing.T) {
	e := startServer(t)
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	good := e.apply(twoServiceModel(a, b, `
      - match: {prefix: /}
        route: [{service: a}]
`), nil)
	cc := client(e, "grpc-client-3", "greeter")
	if _, err := xdstest.Call(e.ctx, cc); err != nil {
		t.Fatal(err)
	}
	// A cluster gRPC rejects (MAGLEV) in an otherwise identical config.
	bad := cloneOutput(good)
	mesh := bad.Groups[translate.GroupMesh]
	for i, r := range mesh.Clusters {
		c := proto.Clone(r.(*clusterv3.Cluster)).(*clusterv3.Cluster)
		if c.GetName() == "a" {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
		}
		mesh.Clusters[i] = c
	}
	before := e.responses(t, "grpc-client-3")["Cluster"]
	if err := e.srv.Apply(e.ctx, bad); err != nil {
		t.Fatal(err)
	}
	xdstest.Eventually(t, "the NACK to be recorded", func() bool {
		for _, n := range e.srv.Tracker().NACKs() {
			if n.Node == "grpc-client-3" && n.TypeURL == resourcev3.ClusterType && strings.Contains(strings.ToLower(n.Message), "maglev") {
				return true
			}
		}
		return false
	})
	// Without the fix the cache re-sends thousands of times a second.
	time.Sleep(time.Second)
	if got := e.responses(t, "grpc-client-3")["Cluster"]; got-before > 2 {
		t.Fatalf("CDS re-sent %d times after a NACK", got-before)
	}
	// The client keeps working on its last good config...
	if p, err := xdstest.Call(e.ctx, cc); err != nil || p != a {
		t.Fatalf("call during NACK: %s %v", p, err)
	}
	// ... and takes the next good one.
	e.apply(twoServiceModel(a, b, `
      - match: {prefix: /}
        route: [{service: b}]
`), nil)
	xdstest.Eventually(t, "recovery after the NACK", func() bool {
		p, err := xdstest.Call(e.ctx, cc)
		return err == nil && p == b
	})
	for _, c := range e.srv.Tracker().Clients() {
		if c.Node == "grpc-client-3" && c.Types["Cluster"].NACKed != "" {
			t.Errorf("still marked NACKed after a good version: %+v", c.Types["Cluster"])
		}
	}
}

func cloneOutput(o *translate.Output) *translate.Output {
	c := &translate.Output{Groups: map[string]*translate.Group{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	for k, v := range o.Endpoints {
		c.Endpoints[k] = v
	}
	for k, g := range o.Groups {
		c.Groups[k] = &translate.Group{
			Listeners: append([]types.Resource(nil), g.Listeners...),
			Routes:    append([]types.Resource(nil), g.Routes...),
			Clusters:  append([]types.Resource(nil), g.Clusters...),
		}
	}
	return c
}

// TestDeltaOnlyChanged: a raw delta ADS client gets only changed resources
// and removals.
func TestDeltaOnlyChanged(t *testing.T) {
	e := startServer(t)
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	model := func(aAddr string, withB bool) string {
		s := fmt.Sprintf("services:\n  - {name: a, endpoints: [{address: %s, port: %s}]}\n", hostOf(aAddr), portOf(aAddr))
		if withB {
			s += fmt.Sprintf("  - {name: b, endpoints: [{address: %s, port: %s}]}\n", hostOf(b), portOf(b))
		}
		return s
	}
	e.apply(model(a, true), nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "delta-client"}
	send := func(r *discoveryv3.DeltaDiscoveryRequest) {
		t.Helper()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}) // ACK
		return r
	}
	names := func(r *discoveryv3.DeltaDiscoveryResponse) string {
		var n []string
		for _, x := range r.GetResources() {
			n = append(n, x.GetName())
		}
		return strings.Join(n, ",") + " removed=" + strings.Join(r.GetRemovedResources(), ",")
	}
	send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*"}})
	if r := recv(); len(r.GetResources()) != 2 {
		t.Fatalf("initial CDS: %s", names(r))
	}
	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a", "b"}})
	if r := recv(); len(r.GetResources()) != 2 {
		t.Fatalf("initial EDS: %s", names(r))
	}
	// Move a: only a's CLA comes.
	e.apply(model(b, true), nil)
	if r := recv(); r.GetTypeUrl() != resourcev3.EndpointType || names(r) != "a removed=" {
		t.Fatalf("after moving a: %s %s", r.GetTypeUrl(), names(r))
	}
	// Remove b: CDS and EDS both report the removal, nothing else.
	e.apply(model(b, false), nil)
	got := map[string]string{}
	for len(got) < 2 {
		r := recv()
		got[r.GetTypeUrl()] = names(r)
	}
	if got[resourcev3.ClusterType] != " removed=b" || got[resourcev3.EndpointType] != " removed=b" {
		t.Fatalf("after removing b: %v", got)
	}
}

// TestSotWEDSShapes: ordinary SotW clients get only the changed CLA (shared
// EDS cache); HDS nodes, which read SotW EDS as the full set, get every
// CLA they asked for.
func TestSotWEDSShapes(t *testing.T) {
	e := startServer(t)
	two := func(aPort int) string {
		return fmt.Sprintf("services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: %d}]}\n  - {name: b, endpoints: [{address: 10.0.0.2, port: 80}]}\n", aPort)
	}
	e.apply(two(80), nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	type sotw struct {
		st   discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
		last *discoveryv3.DiscoveryResponse
	}
	open := func(node *corev3.Node) *sotw {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a", "b"}}); err != nil {
			t.Fatal(err)
		}
		return &sotw{st: st}
	}
	recvNames := func(c *sotw) []string {
		t.Helper()
		r, err := c.st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: []string{"a", "b"}}); err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, res := range r.GetResources() {
			var cla endpointv3.ClusterLoadAssignment
			if err := res.UnmarshalTo(&cla); err != nil {
				t.Fatal(err)
			}
			n = append(n, cla.GetClusterName())
		}
		sort.Strings(n)
		return n
	}
	hdsNode := &corev3.Node{Id: "hds-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue("hds")}}}
	plain, hds := open(&corev3.Node{Id: "plain"}), open(hdsNode)
	if got := strings.Join(recvNames(plain), ","); got != "a,b" {
		t.Fatalf("plain initial %s", got)
	}
	if got := strings.Join(recvNames(hds), ","); got != "a,b" {
		t.Fatalf("hds initial %s", got)
	}
	e.apply(two(81), nil)
	if got := strings.Join(recvNames(plain), ","); got != "a" {
		t.Errorf("plain client after moving a got %s, want only a", got)
	}
	if got := strings.Join(recvNames(hds), ","); got != "a,b" {
		t.Errorf("hds client after moving a got %s, want the full set", got)
	}
}

// TestClientsSotWAndDelta: SotW and delta number their streams separately;
// both kinds must be listed.
func TestClientsSotWAndDelta(t *testing.T) {
	e := startServer(t)
	e.apply("services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n", nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sotw-node"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	d, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "delta-node"}, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recv(); err != nil {
		t.Fatal(err)
	}
	xdstest.Eventually(t, "both streams listed", func() bool {
		got := map[string]string{}
		for _, c := range e.srv.Tracker().Clients() {
			got[c.Node] = c.Protocol
		}
		return got["sotw-node"] == "sotw" && got["delta-node"] == "delta"
	})
}
