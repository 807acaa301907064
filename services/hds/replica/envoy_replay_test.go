package replica

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

type envoyStream struct {
	t      *testing.T
	st     healthv3.HealthDiscoveryService_StreamHealthCheckClient
	cancel context.CancelFunc
	specs  chan *healthv3.HealthCheckSpecifier
}

// openEnvoy does what Envoy's HdsDelegate does on a new stream: send the
// HealthCheckRequest (node, capabilities [HTTP, TCP]) immediately.
func openEnvoy(t *testing.T, cc *grpc.ClientConn, node *corev3.Node) *envoyStream {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := healthv3.NewHealthDiscoveryServiceClient(cc).StreamHealthCheck(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{
		HealthCheckRequest: &healthv3.HealthCheckRequest{Node: node, Capability: &healthv3.Capability{HealthCheckProtocols: []healthv3.Capability_Protocol{healthv3.Capability_HTTP, healthv3.Capability_TCP}}},
	}}); err != nil {
		t.Fatal(err)
	}
	e := &envoyStream{t: t, st: st, cancel: cancel, specs: make(chan *healthv3.HealthCheckSpecifier, 100)}
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				close(e.specs)
				return
			}
			e.specs <- m
		}
	}()
	return e
}

func (e *envoyStream) next(what string) *healthv3.HealthCheckSpecifier {
	e.t.Helper()
	select {
	case s, ok := <-e.specs:
		if !ok {
			e.t.Fatalf("stream closed waiting for %s", what)
		}
		return s
	case <-time.After(20 * time.Second):
		e.t.Fatalf("no specifier: %s", what)
	}
	return nil
}

// report sends one report with every endpoint of spec at status st (plus
// the flat list, as Envoy fills both).
func (e *envoyStream) report(spec *healthv3.HealthCheckSpecifier, st func(addr string) corev3.HealthStatus) {
	resp := &healthv3.EndpointHealthResponse{}
	for _, c := range spec.GetClusterHealthChecks() {
		ceh := &healthv3.ClusterEndpointsHealth{ClusterName: c.GetClusterName()}
		for _, le := range c.GetLocalityEndpoints() {
			leh := &healthv3.LocalityEndpointsHealth{Locality: le.GetLocality()}
			for _, ep := range le.GetEndpoints() {
				eh := &healthv3.EndpointHealth{Endpoint: &endpointv3.Endpoint{Address: ep.GetAddress()}, HealthStatus: st(ep.GetAddress().GetSocketAddress().GetAddress())}
				leh.EndpointsHealth = append(leh.EndpointsHealth, eh)
				resp.EndpointsHealth = append(resp.EndpointsHealth, eh)
			}
			ceh.LocalityEndpointsHealth = append(ceh.LocalityEndpointsHealth, leh)
		}
		resp.ClusterEndpointsHealth = append(resp.ClusterEndpointsHealth, ceh)
	}
	if err := e.st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{EndpointHealthResponse: resp}}); err != nil {
		e.t.Fatal(err)
	}
}

func countEndpoints(s *healthv3.HealthCheckSpecifier) int {
	n := 0
	for _, c := range s.GetClusterHealthChecks() {
		for _, le := range c.GetLocalityEndpoints() {
			n += len(le.GetEndpoints())
		}
	}
	return n
}

// The stream-level contract with Envoy's HDS client.
func TestEnvoyStreamReplay(t *testing.T) {
	snap := testCatalog(6, []string{"zone-a", "zone-b"})
	h := startReplicas(t, 1, 2, snap)
	rep := h.nodes[0].rep
	cc, err := grpc.NewClient(h.nodes[0].addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	// A report before the HealthCheckRequest has no identity.
	bad, err := healthv3.NewHealthDiscoveryServiceClient(cc).StreamHealthCheck(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{EndpointHealthResponse: &healthv3.EndpointHealthResponse{}}})
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("report-first stream: got %v, want InvalidArgument", err)
	}

	node := &corev3.Node{Id: "envoy-1", Cluster: "web", Locality: &corev3.Locality{Zone: "zone-a"}}
	e := openEnvoy(t, cc, node)
	first := e.next("the full specifier on a new stream")
	spec := first
	for countEndpoints(spec) != 6 {
		spec = e.next("the assignment (a lone proxy checks everything)")
	}
	if err := spec.ValidateAll(); err != nil {
		t.Fatalf("specifier fails Envoy's validation: %v", err)
	}
	if got := spec.GetInterval().AsDuration(); got != testReport {
		t.Fatalf("interval = %v, want the report interval %v", got, testReport)
	}
	for i, c := range spec.GetClusterHealthChecks() {
		if c.GetClusterName() == "" || (i > 0 && spec.GetClusterHealthChecks()[i-1].GetClusterName() >= c.GetClusterName()) {
			t.Fatalf("cluster names must be non-empty, unique and sorted: %v", c.GetClusterName())
		}
		hc := c.GetHealthChecks()[0]
		if hc.GetNoTrafficInterval().AsDuration() != hc.GetInterval().AsDuration() {
			t.Fatalf("no_traffic_interval %v != interval %v", hc.GetNoTrafficInterval().AsDuration(), hc.GetInterval().AsDuration())
		}
		for _, le := range c.GetLocalityEndpoints() {
			if len(le.GetEndpoints()) == 0 {
				t.Fatal("empty locality group (undefined behaviour in Envoy)")
			}
		}
	}

	// Envoy reports every host UNHEALTHY before its first check: no failure.
	reportsBefore := counterValue(rep.met.reports)
	e.report(spec, func(string) corev3.HealthStatus { return corev3.HealthStatus_UNHEALTHY })
	eventually(t, 10*time.Second, "report processed", func() bool { return counterValue(rep.met.reports) > reportsBefore })
	if vs := rep.state.VotesOf("envoy-1"); len(vs) != 0 {
		t.Fatalf("initial UNHEALTHY counted as votes: %v", vs)
	}
	// Real results count.
	e.report(spec, func(string) corev3.HealthStatus { return corev3.HealthStatus_HEALTHY })
	eventually(t, 10*time.Second, "HEALTHY verdicts", func() bool {
		for _, ep := range snap.Endpoints() {
			if v, _ := rep.Verdict(ep.Key); v.Verdict != verdict.Up {
				return false
			}
		}
		return true
	})
	victim := snap.Endpoints()[0].Key
	e.report(spec, func(a string) corev3.HealthStatus {
		if a == victim.Address {
			return corev3.HealthStatus_TIMEOUT
		}
		return corev3.HealthStatus_HEALTHY
	})
	eventually(t, 10*time.Second, "UNHEALTHY verdict after a real failure", func() bool {
		v, _ := rep.Verdict(victim)
		return v.Verdict == verdict.Dead
	})

	// No-op sends are skipped: recomputes with nothing changed send nothing.
	sent := counterValue(rep.met.specifiersSent)
	for range 3 {
		rep.recompute()
	}
	// FetchHealthCheck gives the same specifier (and needs the node).
	hds := healthv3.NewHealthDiscoveryServiceClient(cc)
	got, err := hds.FetchHealthCheck(context.Background(), &healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{HealthCheckRequest: &healthv3.HealthCheckRequest{Node: node}}})
	if err != nil || !proto.Equal(got, spec) {
		t.Fatalf("FetchHealthCheck = %v, %v; want the stream's specifier", got, err)
	}
	if _, err := hds.FetchHealthCheck(context.Background(), &healthv3.HealthCheckRequestOrEndpointHealthResponse{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchHealthCheck without node: %v", err)
	}
	if now := counterValue(rep.met.specifiersSent); now != sent {
		t.Fatalf("identical specifiers were sent again (%v → %v)", sent, now)
	}

	// Reconnect (Envoy: new stream after backoff, fresh request, no reports
	// until a specifier): the full specifier comes at once, identical.
	e.cancel()
	e2 := openEnvoy(t, cc, node)
	again := e2.next("full specifier after reconnect")
	if !proto.Equal(again, spec) {
		t.Fatalf("specifier after reconnect differs:\n%v\nvs\n%v", again, spec)
	}
	// Health survives: the endpoint is still UNHEALTHY on the same
	// checker's word after the reconnect, and flips back on a report.
	if v, _ := rep.Verdict(victim); v.Verdict != verdict.Dead {
		t.Fatalf("verdict lost across reconnect: %v", v.Verdict)
	}
	e2.report(again, func(string) corev3.HealthStatus { return corev3.HealthStatus_HEALTHY })
	eventually(t, 10*time.Second, "recovery reported on the new stream", func() bool {
		v, _ := rep.Verdict(victim)
		return v.Verdict == verdict.Up
	})
	e2.cancel()
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
