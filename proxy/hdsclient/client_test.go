package hdsclient

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeHDS is a real gRPC HDS server: it records requests and reports and
// sends the specifiers the test pushes.
type fakeHDS struct {
	healthv3.UnimplementedHealthDiscoveryServiceServer
	mu       sync.Mutex
	requests []*healthv3.HealthCheckRequest
	reports  []*healthv3.EndpointHealthResponse
	spec     *healthv3.HealthCheckSpecifier // sent on every new stream
	push     chan *healthv3.HealthCheckSpecifier
	kill     chan struct{}
	streams  atomic.Int32
}

func (f *fakeHDS) StreamHealthCheck(st healthv3.HealthDiscoveryService_StreamHealthCheckServer) error {
	f.streams.Add(1)
	first, err := st.Recv()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.requests = append(f.requests, first.GetHealthCheckRequest())
	spec := f.spec
	f.mu.Unlock()
	if spec != nil {
		if err := st.Send(spec); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			f.mu.Lock()
			f.reports = append(f.reports, m.GetEndpointHealthResponse())
			f.mu.Unlock()
		}
	}()
	for {
		select {
		case s := <-f.push:
			f.mu.Lock()
			f.spec = s
			f.mu.Unlock()
			if err := st.Send(s); err != nil {
				return err
			}
		case <-f.kill:
			return errors.New("killed by test")
		case err := <-errc:
			return err
		}
	}
}

func (f *fakeHDS) lastReport() *healthv3.EndpointHealthResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 {
		return nil
	}
	return f.reports[len(f.reports)-1]
}

func (f *fakeHDS) nReports() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reports)
}

func startHDS(t *testing.T, addr string) (*fakeHDS, *grpc.Server) {
	t.Helper()
	f := &fakeHDS{push: make(chan *healthv3.HealthCheckSpecifier, 4), kill: make(chan struct{}, 1)}
	return f, serveHDS(t, f, addr)
}

func serveHDS(t *testing.T, f *fakeHDS, addr string) *grpc.Server {
	t.Helper()
	var ln net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the previous server's port may linger
	}
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthv3.RegisterHealthDiscoveryServiceServer(s, f)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	hdsAddrs.Store(f, ln.Addr().String())
	return s
}

var hdsAddrs sync.Map

func addrOf(f *fakeHDS) string { v, _ := hdsAddrs.Load(f); return v.(string) }

// app is a real HTTP upstream with a switchable /healthz.
type app struct {
	srv    *httptest.Server
	status atomic.Int32
	probes atomic.Int64
}

func newApp(t *testing.T) *app {
	a := &app{}
	a.status.Store(200)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.probes.Add(1)
		w.WriteHeader(int(a.status.Load()))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func hostPort(t *testing.T, addr string) (string, uint32) {
	h, p, err := net.SplitHostPort(strings.TrimPrefix(addr, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, uint32(n)
}

func ep(t *testing.T, addr string) *endpointv3.Endpoint {
	h, p := hostPort(t, addr)
	return &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}
}

func httpCheck() *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout: durationpb.New(time.Second), Interval: durationpb.New(20 * time.Millisecond),
		NoTrafficInterval:  durationpb.New(20 * time.Millisecond),
		HealthyThreshold:   wrapperspb.UInt32(2),
		UnhealthyThreshold: wrapperspb.UInt32(2),
		HealthChecker:      &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	}
}

func tcpCheck() *corev3.HealthCheck {
	hc := httpCheck()
	hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
	return hc
}

func spec(interval time.Duration, clusters ...*healthv3.ClusterHealthCheck) *healthv3.HealthCheckSpecifier {
	return &healthv3.HealthCheckSpecifier{ClusterHealthChecks: clusters, Interval: durationpb.New(interval)}
}

func clusterHC(name string, hc *corev3.HealthCheck, groups ...*healthv3.LocalityEndpoints) *healthv3.ClusterHealthCheck {
	return &healthv3.ClusterHealthCheck{ClusterName: name, HealthChecks: []*corev3.HealthCheck{hc}, LocalityEndpoints: groups}
}

func loc(zone string, eps ...*endpointv3.Endpoint) *healthv3.LocalityEndpoints {
	return &healthv3.LocalityEndpoints{Locality: &corev3.Locality{Zone: zone}, Endpoints: eps}
}

// statusOf finds an endpoint's status in a report by cluster, zone and address.
func statusOf(r *healthv3.EndpointHealthResponse, cluster, zone, addr string) (corev3.HealthStatus, bool) {
	for _, c := range r.GetClusterEndpointsHealth() {
		if c.GetClusterName() != cluster {
			continue
		}
		for _, l := range c.GetLocalityEndpointsHealth() {
			if l.GetLocality().GetZone() != zone {
				continue
			}
			for _, e := range l.GetEndpointsHealth() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				if net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))) == addr {
					return e.GetHealthStatus(), true
				}
			}
		}
	}
	return 0, false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(25 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(15 * time.Millisecond)
	}
}

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func runClient(t *testing.T, addr string) (*Client, func()) {
	return runClientReg(t, addr, nil)
}

func runClientReg(t *testing.T, addr string, reg prometheus.Registerer) (*Client, func()) {
	c, err := New(Config{Addr: addr, Node: &corev3.Node{Id: "web-sidecar", Cluster: "web", Locality: &corev3.Locality{Zone: "zone-a"}},
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return c, stop
}

func TestHDSClientLifecycle(t *testing.T) {
	f, _ := startHDS(t, "127.0.0.1:0")
	up, up2 := newApp(t), newApp(t)
	dead := deadAddr(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	up2Addr := strings.TrimPrefix(up2.srv.URL, "http://")
	f.spec = spec(50*time.Millisecond,
		clusterHC("web", httpCheck(), loc("zone-a", ep(t, upAddr)), loc("zone-b", ep(t, dead))))
	reg := prometheus.NewRegistry()
	c, stop := runClientReg(t, addrOf(f), reg)
	defer stop()

	// 1. The first message announces node and capabilities.
	waitFor(t, "health check request", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.requests) > 0 })
	f.mu.Lock()
	req := f.requests[0]
	f.mu.Unlock()
	if req.GetNode().GetId() != "web-sidecar" || !proto.Equal(req.GetCapability(), &healthv3.Capability{HealthCheckProtocols: []healthv3.Capability_Protocol{healthv3.Capability_HTTP, healthv3.Capability_TCP}}) {
		t.Fatalf("first request: %v", req)
	}
	if lv := req.GetNode().GetMetadata().GetFields()[MetadataProtocols].GetListValue().GetValues(); len(lv) != 3 || lv[2].GetStringValue() != "GRPC" {
		t.Fatalf("hds_protocols metadata: %v", lv)
	}

	// 2. Reports group by cluster and locality; healthy and dead endpoints.
	waitFor(t, "healthy + unhealthy report", func() bool {
		r := f.lastReport()
		a, _ := statusOf(r, "web", "zone-a", upAddr)
		b, _ := statusOf(r, "web", "zone-b", dead)
		return a == corev3.HealthStatus_HEALTHY && b == corev3.HealthStatus_UNHEALTHY
	})
	r := f.lastReport()
	if len(r.GetClusterEndpointsHealth()) != 1 || len(r.GetClusterEndpointsHealth()[0].GetLocalityEndpointsHealth()) != 2 || len(r.GetEndpointsHealth()) != 2 {
		t.Fatalf("report shape: %v", r)
	}
	if z := r.GetClusterEndpointsHealth()[0].GetLocalityEndpointsHealth()[0].GetLocality().GetZone(); z != "zone-a" {
		t.Fatalf("locality order: first zone %q", z)
	}
	probesBefore := up.probes.Load()

	// 3. An identical specifier is ignored.
	updates := c.Status().Updates
	f.push <- f.spec
	waitFor(t, "specifier counted", func() bool { return c.Status().Specifiers >= 2 })
	if got := c.Status().Updates; got != updates {
		t.Fatalf("identical specifier applied: updates %d → %d", updates, got)
	}

	// 4. A new specifier replaces the whole set: the dead host goes, a TCP
	// cluster comes, the kept host keeps its health (healthy_threshold 2
	// would otherwise report it UNKNOWN/UNHEALTHY first).
	next := spec(50*time.Millisecond,
		clusterHC("web", httpCheck(), loc("zone-a", ep(t, upAddr))),
		clusterHC("api", tcpCheck(), loc("zone-b", ep(t, up2Addr))))
	f.push <- next
	waitFor(t, "update applied", func() bool { return c.Status().Updates == updates+1 })
	n := f.nReports()
	waitFor(t, "report with api healthy", func() bool {
		r := f.lastReport()
		s, ok := statusOf(r, "api", "zone-b", up2Addr)
		return f.nReports() > n && ok && s == corev3.HealthStatus_HEALTHY
	})
	f.mu.Lock()
	for _, r := range f.reports[n:] {
		if s, ok := statusOf(r, "web", "zone-a", upAddr); !ok || s != corev3.HealthStatus_HEALTHY {
			f.mu.Unlock()
			t.Fatalf("kept host lost its health: %v %v", s, ok)
		}
		if _, ok := statusOf(r, "web", "zone-b", dead); ok {
			f.mu.Unlock()
			t.Fatal("removed host still reported")
		}
	}
	f.mu.Unlock()
	if up.probes.Load() <= probesBefore {
		t.Fatal("kept host is no longer probed")
	}

	if st := c.Status(); st.ReportInterval != 50*time.Millisecond {
		t.Fatalf("report interval %v", st.ReportInterval)
	}
	// A new interval re-arms the report timer (Envoy's TestUpdateChangesTimer).
	slower := proto.Clone(next).(*healthv3.HealthCheckSpecifier)
	slower.Interval = durationpb.New(300 * time.Millisecond)
	f.push <- slower
	waitFor(t, "report interval 300ms", func() bool { return c.Status().ReportInterval == 300*time.Millisecond })
	n = f.nReports()
	waitFor(t, "reports continue", func() bool { return f.nReports() >= n+2 })
	f.push <- next
	waitFor(t, "report interval back to 50ms", func() bool { return c.Status().ReportInterval == 50*time.Millisecond })
	updates = c.Status().Updates

	// 5. An invalid specifier is rejected and the old checks stay.
	bad := proto.Clone(next).(*healthv3.HealthCheckSpecifier)
	bad.ClusterHealthChecks[0].HealthChecks[0].HealthyThreshold = nil
	errs := c.Status().Errors
	f.push <- bad
	waitFor(t, "rejection", func() bool { return c.Status().Errors > errs })
	if st := c.Status(); len(st.Clusters) != 2 || !strings.Contains(st.LastError, "HealthyThreshold") {
		t.Fatalf("after bad specifier: clusters=%d err=%q", len(st.Clusters), st.LastError)
	}

	// The admin page shows the same.
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "/hds", nil))
	if body := rec.Body.String(); rec.Code != 200 || !strings.Contains(body, `"name": "api"`) || !strings.Contains(body, `"health": "HEALTHY"`) {
		t.Fatalf("admin page: %d %s", rec.Code, body)
	}

	// Counters as Envoy's hds_delegate and health_check stats.
	mfs, _ := reg.Gather()
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			k := mf.GetName()
			for _, l := range m.GetLabel() {
				k += "/" + l.GetValue()
			}
			got[k] = m.GetCounter().GetValue()
		}
	}
	if got["sidemesh_proxy_hds_events_total/updates"] != float64(updates) || got["sidemesh_proxy_hds_events_total/errors"] != 1 ||
		got["sidemesh_proxy_hds_events_total/requests"] < 4 || got["sidemesh_proxy_health_checks_total/web/success"] == 0 ||
		got["sidemesh_proxy_health_checks_total/api/success"] == 0 {
		t.Fatalf("metrics: %v", got)
	}

	// 6. An upstream that starts failing turns UNHEALTHY in the reports.
	up.status.Store(503)
	waitFor(t, "web unhealthy", func() bool {
		s, _ := statusOf(f.lastReport(), "web", "zone-a", upAddr)
		return s == corev3.HealthStatus_UNHEALTHY
	})
}

func TestHDSClientReconnectKeepsChecking(t *testing.T) {
	f, srv := startHDS(t, "127.0.0.1:0")
	addr := addrOf(f)
	up := newApp(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	f.spec = spec(30*time.Millisecond, clusterHC("web", httpCheck(), loc("zone-a", ep(t, upAddr))))
	c, stop := runClient(t, addr)
	defer stop()
	waitFor(t, "healthy report", func() bool {
		s, _ := statusOf(f.lastReport(), "web", "zone-a", upAddr)
		return s == corev3.HealthStatus_HEALTHY
	})
	// The server goes away entirely; checks must go on.
	srv.Stop()
	waitFor(t, "disconnected", func() bool { return !c.Status().Connected })
	probes := up.probes.Load()
	waitFor(t, "probes while disconnected", func() bool { return up.probes.Load() >= probes+5 })
	up.status.Store(500)
	waitFor(t, "state changes while disconnected", func() bool {
		st := c.Status()
		return len(st.Clusters) == 1 && st.Clusters[0].Hosts[0].Health == "UNHEALTHY"
	})
	// A new server on the same address: a fresh request, the same
	// specifier is applied again (reports resume) and health is kept.
	f2 := &fakeHDS{push: make(chan *healthv3.HealthCheckSpecifier, 4), kill: make(chan struct{}, 1), spec: f.spec}
	serveHDS(t, f2, addr)
	waitFor(t, "reports resume on the new server", func() bool {
		s, ok := statusOf(f2.lastReport(), "web", "zone-a", upAddr)
		return ok && s == corev3.HealthStatus_UNHEALTHY
	})
	f2.mu.Lock()
	if len(f2.requests) == 0 || f2.requests[0].GetNode().GetId() != "web-sidecar" {
		t.Fatal("no HealthCheckRequest on the new stream")
	}
	f2.mu.Unlock()
	if st := c.Status(); st.Streams < 2 || st.Updates < 2 {
		t.Fatalf("status after reconnect: %+v", st)
	}
	// A stream the server ends is re-opened too.
	streams := f2.streams.Load()
	f2.kill <- struct{}{}
	waitFor(t, "re-opened stream", func() bool { return f2.streams.Load() > streams && c.Status().Connected })
}

func TestHDSClientSkipsDisabledAndHonoursCheckPort(t *testing.T) {
	f, _ := startHDS(t, "127.0.0.1:0")
	up := newApp(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	_, upPort := hostPort(t, upAddr)
	// Serving address is a dead port; the check goes to the app's port.
	serving := ep(t, deadAddr(t))
	serving.HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{PortValue: upPort}
	disabled := ep(t, deadAddr(t))
	disabled.HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{DisableActiveHealthCheck: true}
	f.spec = spec(30*time.Millisecond, clusterHC("web", httpCheck(), loc("zone-a", serving, disabled)))
	// The first replica listed is down: the client moves on to the next.
	c, stop := runClient(t, deadAddr(t)+","+addrOf(f))
	defer stop()
	sa := serving.GetAddress().GetSocketAddress()
	servingAddr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	waitFor(t, "serving address reported healthy", func() bool {
		s, _ := statusOf(f.lastReport(), "web", "zone-a", servingAddr)
		return s == corev3.HealthStatus_HEALTHY
	})
	if r := f.lastReport(); len(r.GetEndpointsHealth()) != 1 {
		t.Fatalf("disabled endpoint reported: %v", r)
	}
	if st := c.Status(); st.Clusters[0].Hosts[0].CheckAddr != upAddr {
		t.Fatalf("check address %s, want %s", st.Clusters[0].Hosts[0].CheckAddr, upAddr)
	}
}
