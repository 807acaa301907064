package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func baseHC(timeout time.Duration, healthy, unhealthy uint32) *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout:            durationpb.New(timeout),
		Interval:           durationpb.New(20 * time.Millisecond),
		NoTrafficInterval:  durationpb.New(20 * time.Millisecond),
		HealthyThreshold:   wrapperspb.UInt32(healthy),
		UnhealthyThreshold: wrapperspb.UInt32(unhealthy),
	}
}

func httpHC(path string, healthy, unhealthy uint32) *corev3.HealthCheck {
	hc := baseHC(2*time.Second, healthy, unhealthy)
	hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: path}}
	return hc
}

func mustNew(t *testing.T, hc *corev3.HealthCheck) *Checker {
	t.Helper()
	c, err := New(hc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// upstream is a real HTTP server whose /healthz answer the test controls.
type upstream struct {
	srv    *httptest.Server
	status atomic.Int32
	delay  atomic.Int64
	probes atomic.Int64
	mu     sync.Mutex
	last   *http.Request
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.status.Store(200)
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.probes.Add(1)
		u.mu.Lock()
		u.last = r.Clone(context.Background())
		u.mu.Unlock()
		if d := time.Duration(u.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(int(u.status.Load()))
		_, _ = w.Write([]byte("status: ok, ready"))
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) lastReq() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

func TestStateMachineEnvoyRules(t *testing.T) {
	const hT, uT = 3, 3
	ok := Result{}
	net := Result{Kind: FailNetwork}
	tmo := Result{Kind: FailTimeout}
	bad := Result{Kind: FailActive, HTTPStatus: 503}
	retr := Result{Kind: FailActive, Retriable: true, HTTPStatus: 429}
	h := NewHost(Target{})
	c := &counters{firstCheck: true}
	if got := h.State().HealthStatus(); got != corev3.HealthStatus_UNKNOWN {
		t.Fatalf("before any check: %v, want UNKNOWN", got)
	}
	steps := []struct {
		r       Result
		healthy bool
		tr      transition
		status  corev3.HealthStatus
	}{
		{ok, true, changed, corev3.HealthStatus_HEALTHY}, // first success marks healthy at once
		{net, true, changePending, corev3.HealthStatus_HEALTHY},
		{tmo, true, changePending, corev3.HealthStatus_HEALTHY},
		{ok, true, unchanged, corev3.HealthStatus_HEALTHY}, // success resets the failure count
		{net, true, changePending, corev3.HealthStatus_HEALTHY},
		{retr, true, changePending, corev3.HealthStatus_HEALTHY}, // retriable counts
		{tmo, false, changed, corev3.HealthStatus_TIMEOUT},       // third counted failure
		{net, false, unchanged, corev3.HealthStatus_UNHEALTHY},
		{ok, false, changePending, corev3.HealthStatus_UNHEALTHY}, // not first: needs 3
		{ok, false, changePending, corev3.HealthStatus_UNHEALTHY},
		{ok, true, changed, corev3.HealthStatus_HEALTHY},
		{bad, false, changed, corev3.HealthStatus_UNHEALTHY}, // non-retriable: at once
	}
	for i, s := range steps {
		tr := h.apply(c, s.r, hT, uT)
		st := h.State()
		if st.Healthy != s.healthy || tr != s.tr || st.HealthStatus() != s.status {
			t.Fatalf("step %d (%v): healthy=%v tr=%v status=%v, want %v %v %v", i, s.r.Kind, st.Healthy, tr, st.HealthStatus(), s.healthy, s.tr, s.status)
		}
	}
}

func TestFirstFailureKeepsUnhealthyAndNewSessionFlipsOnFirstSuccess(t *testing.T) {
	h := NewHost(Target{})
	c := &counters{firstCheck: true}
	h.apply(c, Result{Kind: FailNetwork}, 2, 2)
	if st := h.State(); st.Healthy || st.HealthStatus() != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("after first failure: %+v", st)
	}
	h.apply(c, Result{}, 2, 2) // not first any more: 1 of 2
	if h.State().Healthy {
		t.Fatal("second check of the session should need healthy_threshold")
	}
	// A replaced checker starts a new session: its first success counts.
	h.apply(&counters{firstCheck: true}, Result{}, 2, 2)
	if !h.State().Healthy {
		t.Fatal("first check of a new session should mark healthy")
	}
}

func TestIntervals(t *testing.T) {
	hc := httpHC("/", 1, 1)
	hc.Interval = durationpb.New(10 * time.Second)
	hc.UnhealthyInterval = durationpb.New(20 * time.Second)
	hc.UnhealthyEdgeInterval = durationpb.New(30 * time.Second)
	hc.HealthyEdgeInterval = durationpb.New(40 * time.Second)
	hc.NoTrafficInterval = nil
	traffic := false
	c, err := New(hc, Options{HasTraffic: func() bool { return traffic }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.next(true, unchanged); got != 60*time.Second {
		t.Fatalf("no traffic default: %v, want 60s", got)
	}
	traffic = true
	for _, tc := range []struct {
		ok   bool
		tr   transition
		want time.Duration
	}{
		{true, unchanged, 10 * time.Second},
		{true, changePending, 40 * time.Second},
		{false, unchanged, 20 * time.Second},
		{false, changePending, 30 * time.Second},
	} {
		if got := c.next(tc.ok, tc.tr); got != tc.want {
			t.Errorf("next(%v,%v)=%v want %v", tc.ok, tc.tr, got, tc.want)
		}
	}
	hc.IntervalJitter = durationpb.New(time.Second)
	hc.IntervalJitterPercent = 10
	c2, _ := New(hc, Options{HasTraffic: func() bool { return true }})
	defer c2.Close()
	for range 200 {
		got := c2.next(true, unchanged)
		if got < 10*time.Second || got >= 12*time.Second {
			t.Fatalf("jittered interval %v outside [10s, 12s)", got)
		}
	}
}

func TestHTTPRequestShape(t *testing.T) {
	u := newUpstream(t)
	hc := httpHC("/healthz?full=1", 1, 1)
	h := hc.GetHttpHealthCheck()
	h.Host = "svc.example"
	h.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-probe", Value: "yes"}}}
	h.RequestHeadersToRemove = []string{"user-agent"}
	c := mustNew(t, hc)
	host := NewHost(Target{Cluster: "web", Addr: u.addr()})
	if r, _ := c.step(context.Background(), host, &counters{firstCheck: true}); r.Kind != FailNone {
		t.Fatalf("probe: %+v", r)
	}
	req := u.lastReq()
	if req.Method != "GET" || req.URL.Path != "/healthz" || req.URL.RawQuery != "full=1" || req.Host != "svc.example" || req.Header.Get("x-probe") != "yes" {
		t.Fatalf("request: %s %s host=%s headers=%v", req.Method, req.URL, req.Host, req.Header)
	}
	if _, ok := req.Header["User-Agent"]; ok {
		t.Fatalf("user-agent should have been removed, got %q", req.Header.Get("User-Agent"))
	}
	// Host defaults: endpoint hostname, then cluster name.
	h.Host = ""
	h.RequestHeadersToRemove = nil
	c2 := mustNew(t, hc)
	c2.step(context.Background(), NewHost(Target{Cluster: "web", Addr: u.addr()}), &counters{firstCheck: true})
	if got := u.lastReq().Host; got != "web" {
		t.Fatalf("default Host %q, want cluster name", got)
	}
	c2.step(context.Background(), NewHost(Target{Cluster: "web", Addr: u.addr(), Hostname: "ep.local"}), &counters{firstCheck: true})
	if got := u.lastReq().Host; got != "ep.local" {
		t.Fatalf("Host %q, want endpoint hostname", got)
	}
	if ua := u.lastReq().Header.Get("User-Agent"); ua != "Envoy/HC" {
		t.Fatalf("User-Agent %q", ua)
	}
}

func TestSourceIP(t *testing.T) {
	u := newUpstream(t)
	c, err := New(httpHC("/healthz", 1, 1), Options{SourceIP: netip.MustParseAddr("127.0.0.3")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, _ := c.step(context.Background(), NewHost(Target{Cluster: "web", Addr: u.addr()}), &counters{firstCheck: true}); r.Kind != FailNone {
		t.Fatalf("probe: %+v", r)
	}
	if host, _, _ := net.SplitHostPort(u.lastReq().RemoteAddr); host != "127.0.0.3" {
		t.Fatalf("probe came from %s, want 127.0.0.3", host)
	}
}

func TestHTTPStatusesAndThresholds(t *testing.T) {
	u := newUpstream(t)
	hc := httpHC("/healthz", 2, 3)
	h := hc.GetHttpHealthCheck()
	h.ExpectedStatuses = []*typev3.Int64Range{{Start: 200, End: 300}}
	h.RetriableStatuses = []*typev3.Int64Range{{Start: 429, End: 430}}
	c := mustNew(t, hc)
	host := NewHost(Target{Cluster: "web", Addr: u.addr()})
	cnt := &counters{firstCheck: true}
	step := func() State { c.step(context.Background(), host, cnt); return host.State() }

	u.status.Store(204)
	if st := step(); !st.Healthy || st.HTTPStatus != 204 {
		t.Fatalf("204 in [200,300) should pass: %+v", st)
	}
	u.status.Store(429) // retriable: needs 3
	for i := range 2 {
		if st := step(); !st.Healthy {
			t.Fatalf("retriable failure %d marked unhealthy early", i+1)
		}
	}
	if st := step(); st.Healthy {
		t.Fatal("third retriable failure should mark unhealthy")
	}
	u.status.Store(200)
	if st := step(); st.Healthy {
		t.Fatal("healthy_threshold 2: one success is not enough after a failure")
	}
	if st := step(); !st.Healthy {
		t.Fatal("second success should mark healthy")
	}
	u.status.Store(503) // not retriable: at once
	if st := step(); st.Healthy || st.HealthStatus() != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("503 should mark unhealthy at once: %+v", st)
	}
}

func TestHTTPTimeoutAndConnectFailureCountTowardsThreshold(t *testing.T) {
	u := newUpstream(t)
	hc := httpHC("/healthz", 1, 2)
	hc.Timeout = durationpb.New(100 * time.Millisecond)
	c := mustNew(t, hc)
	host := NewHost(Target{Cluster: "web", Addr: u.addr()})
	cnt := &counters{firstCheck: true}
	step := func() (Result, State) { r, _ := c.step(context.Background(), host, cnt); return r, host.State() }
	if _, st := step(); !st.Healthy {
		t.Fatal("want healthy")
	}
	u.delay.Store(int64(2 * time.Second))
	if r, st := step(); r.Kind != FailTimeout || !st.Healthy {
		t.Fatalf("first timeout: kind=%v healthy=%v", r.Kind, st.Healthy)
	}
	if r, st := step(); r.Kind != FailTimeout || st.Healthy || st.HealthStatus() != corev3.HealthStatus_TIMEOUT {
		t.Fatalf("second timeout: kind=%v %+v", r.Kind, st)
	}
	// A closed port is a network failure: UNHEALTHY, not TIMEOUT.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	host2 := NewHost(Target{Cluster: "web", Addr: dead})
	r, _ := c.step(context.Background(), host2, &counters{firstCheck: true})
	if r.Kind != FailNetwork || host2.State().HealthStatus() != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("refused: %+v %v", r, host2.State().HealthStatus())
	}
}

func TestHTTPReceivePayloadAndDegraded(t *testing.T) {
	u := newUpstream(t)
	hc := httpHC("/healthz", 1, 1)
	hc.GetHttpHealthCheck().Receive = []*corev3.HealthCheck_Payload{
		{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("status")}},
		{Payload: &corev3.HealthCheck_Payload_Text{Text: "7265616479"}}, // "ready"
	}
	c := mustNew(t, hc)
	host := NewHost(Target{Cluster: "web", Addr: u.addr()})
	if r, _ := c.step(context.Background(), host, &counters{firstCheck: true}); r.Kind != FailNone {
		t.Fatalf("payload in order should pass: %+v", r)
	}
	hc.GetHttpHealthCheck().Receive = []*corev3.HealthCheck_Payload{
		{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("ready")}},
		{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("status")}},
	}
	c2 := mustNew(t, hc)
	if r, _ := c2.step(context.Background(), host, &counters{firstCheck: true}); r.Kind != FailActive {
		t.Fatalf("out-of-order payload should fail: %+v", r)
	}
}

func TestRunProbesOnInterval(t *testing.T) {
	u := newUpstream(t)
	c := mustNew(t, httpHC("/healthz", 1, 1))
	host := NewHost(Target{Cluster: "web", Addr: u.addr()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, host); close(done) }()
	waitFor(t, "5 probes", func() bool { return u.probes.Load() >= 5 && host.State().Healthy })
	u.status.Store(503)
	waitFor(t, "unhealthy", func() bool { return !host.State().Healthy })
	u.status.Store(200)
	waitFor(t, "healthy again", func() bool { return host.State().Healthy })
	cancel()
	<-done
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reply := atomic.Value{}
	reply.Store("Pong")
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 4)
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				n, _ := conn.Read(buf)
				if string(buf[:n]) == "Ping" {
					conn.Write([]byte(reply.Load().(string)))
				}
				conn.Read(buf) // hold the connection until the prober closes it
			}()
		}
	}()
	mk := func(send, recv string) *Checker {
		hc := baseHC(300*time.Millisecond, 1, 1)
		tc := &corev3.HealthCheck_TcpHealthCheck{}
		if send != "" {
			tc.Send = &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: send}}
		}
		if recv != "" {
			tc.Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Text{Text: recv}}}
		}
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: tc}
		return mustNew(t, hc)
	}
	target := Target{Cluster: "tcp", Addr: ln.Addr().String()}
	if r, _ := mk("", "").step(context.Background(), NewHost(target), &counters{firstCheck: true}); r.Kind != FailNone {
		t.Fatalf("connect-only: %+v", r)
	}
	pingPong := mk("50696E67", "506F6E67")
	h := NewHost(target)
	if r, _ := pingPong.step(context.Background(), h, &counters{firstCheck: true}); r.Kind != FailNone || !h.State().Healthy {
		t.Fatalf("ping/pong: %+v", r)
	}
	reply.Store("Voronoi") // wrong data: fails by timeout, like Envoy
	r, _ := pingPong.step(context.Background(), h, &counters{})
	if r.Kind != FailTimeout || h.State().HealthStatus() != corev3.HealthStatus_TIMEOUT {
		t.Fatalf("mismatch: %+v %v", r, h.State().HealthStatus())
	}
	ln.Close()
	h2 := NewHost(target)
	if r, _ := mk("", "").step(context.Background(), h2, &counters{firstCheck: true}); r.Kind != FailNetwork {
		t.Fatalf("closed listener: %+v", r)
	}
}

func TestGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_SERVING)
	go srv.Serve(ln)
	defer srv.Stop()
	hc := baseHC(2*time.Second, 1, 3)
	hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: "api"}}
	c := mustNew(t, hc)
	h := NewHost(Target{Cluster: "api", Addr: ln.Addr().String()})
	cnt := &counters{firstCheck: true}
	if r, _ := c.step(context.Background(), h, cnt); r.Kind != FailNone || !h.State().Healthy {
		t.Fatalf("serving: %+v", r)
	}
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, _ := c.step(context.Background(), h, cnt); r.Kind != FailActive || h.State().Healthy {
		t.Fatalf("NOT_SERVING should fail at once: %+v", r)
	}
	// A host's session ending releases its connection.
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_SERVING)
	h2 := NewHost(Target{Cluster: "api", Addr: ln.Addr().String(), Hostname: "other"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, h2); close(done) }()
	waitFor(t, "grpc host healthy", func() bool { return h2.State().Healthy })
	cancel()
	<-done
	gp := c.p.(*grpcProber)
	gp.mu.Lock()
	_, still := gp.conns[ln.Addr().String()+"|other"]
	gp.mu.Unlock()
	if still {
		t.Fatal("connection kept after the session ended")
	}

	hc.GetGrpcHealthCheck().ServiceName = "unknown"
	c2 := mustNew(t, hc)
	if r, _ := c2.step(context.Background(), NewHost(h.Target), &counters{firstCheck: true}); r.Kind != FailActive {
		t.Fatalf("unknown service (NotFound) should be an active failure: %+v", r)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cases := map[string]func(*corev3.HealthCheck){
		"Timeout: value is required": func(hc *corev3.HealthCheck) { hc.Timeout = nil },
		"expected_statuses[0]": func(hc *corev3.HealthCheck) {
			hc.GetHttpHealthCheck().ExpectedStatuses = []*typev3.Int64Range{{Start: 300, End: 200}}
		},
		"CONNECT": func(hc *corev3.HealthCheck) { hc.GetHttpHealthCheck().Method = corev3.RequestMethod_CONNECT },
		"not hex": func(hc *corev3.HealthCheck) {
			hc.GetHttpHealthCheck().Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Text{Text: "zz"}}}
		},
		"response_buffer_size": func(hc *corev3.HealthCheck) {
			hc.GetHttpHealthCheck().ResponseBufferSize = wrapperspb.UInt64(1)
			hc.GetHttpHealthCheck().Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("ab")}}}
		},
		"only http_health_check": func(hc *corev3.HealthCheck) {
			hc.HealthChecker = &corev3.HealthCheck_CustomHealthCheck_{CustomHealthCheck: &corev3.HealthCheck_CustomHealthCheck{Name: "redis"}}
		},
	}
	for want, mut := range cases {
		hc := httpHC("/healthz", 1, 1)
		mut(hc)
		_, err := New(hc, Options{})
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Errorf("%s: err = %v", want, err)
		}
	}
}

// FuzzNew: arbitrary HealthCheck protos are rejected with an error or
// accepted, never a panic.
func FuzzNew(f *testing.F) {
	for _, hc := range []*corev3.HealthCheck{httpHC("/h", 1, 1), baseHC(time.Second, 2, 2)} {
		b, _ := proto.Marshal(hc)
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var hc corev3.HealthCheck
		if proto.Unmarshal(b, &hc) != nil {
			return
		}
		if c, err := New(&hc, Options{}); err == nil {
			c.next(true, unchanged)
			c.Close()
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
