package ratelimit

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitconfv3 "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeRLS is a real gRPC RateLimitService: limit requests per descriptor
// value, with optional delay; it records the requests it sees.
type fakeRLS struct {
	rlsv3.UnimplementedRateLimitServiceServer
	limit int
	delay atomic.Int64
	mu    sync.Mutex
	seen  map[string]int
	reqs  []*rlsv3.RateLimitRequest
}

func (f *fakeRLS) ShouldRateLimit(ctx context.Context, r *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if d := time.Duration(f.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r)
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK,
		ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "x-rls-replica", Value: "fake"}},
		RequestHeadersToAdd:  []*corev3.HeaderValue{{Key: "x-rls-checked", Value: "1"}}}
	for _, d := range r.GetDescriptors() {
		k := render([]*rlcommonv3.RateLimitDescriptor{d})
		f.seen[k]++
		remaining := max(f.limit-f.seen[k], 0)
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: uint32(f.limit), Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
			LimitRemaining:     uint32(remaining),
			DurationUntilReset: durationpb.New(42 * time.Second)}
		if f.seen[k] > f.limit {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		resp.Statuses = append(resp.Statuses, st)
	}
	return resp, nil
}

func (f *fakeRLS) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func startFakeRLS(t *testing.T, limit int) (*fakeRLS, string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRLS{limit: limit, seen: map[string]int{}}
	s := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(s, f)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return f, ln.Addr().String(), s.Stop
}

func filterConf(timeout time.Duration, deny bool) *ratelimitv3.RateLimit {
	return &ratelimitv3.RateLimit{Domain: "sidemesh", Timeout: durationpb.New(timeout), FailureModeDeny: deny,
		EnableXRatelimitHeaders: ratelimitv3.RateLimit_DRAFT_VERSION_03,
		RateLimitService: &ratelimitconfv3.RateLimitServiceConfig{TransportApiVersion: corev3.ApiVersion_V3,
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "rls"}}}}}
}

func userRoute(t testing.TB) RouteInfo {
	return RouteInfo{Route: mustCompile(t, limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)})), DestinationCluster: "api"}
}

func newReq(user string) *http.Request {
	r := httptest.NewRequest("GET", "http://ingress/api/x", nil)
	if user != "" {
		r.Header.Set("x-user", user)
	}
	return r
}

func TestFilterDecisions(t *testing.T) {
	f, addr, stop := startFakeRLS(t, 3)
	conn, client, err := Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reg := prometheus.NewRegistry()
	flt, err := New(filterConf(2*time.Second, false), client, Options{LocalCluster: "ingress", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	route := userRoute(t)
	ctx := context.Background()

	// No descriptor: RLS is not called.
	if d := flt.Check(ctx, newReq(""), route); d.Outcome != NotApplied || d.Deny {
		t.Fatalf("no header: %+v", d)
	}
	if f.calls() != 0 {
		t.Fatal("RLS called without descriptors")
	}
	for i := range 3 {
		d := flt.Check(ctx, newReq("alice"), route)
		if d.Outcome != OK || d.Deny || d.RequestHeaders.Get("x-rls-checked") != "1" || d.ResponseHeaders.Get("x-rls-replica") != "fake" {
			t.Fatalf("request %d: %+v", i, d)
		}
		if got, want := d.ResponseHeaders.Get("X-RateLimit-Remaining"), []string{"2", "1", "0"}[i]; got != want {
			t.Fatalf("remaining %q want %q", got, want)
		}
		if l := d.ResponseHeaders.Get("X-RateLimit-Limit"); l != "3, 3;w=60" || d.ResponseHeaders.Get("X-RateLimit-Reset") != "42" {
			t.Fatalf("x-ratelimit headers: %v", d.ResponseHeaders)
		}
	}
	d := flt.Check(ctx, newReq("alice"), route)
	if d.Outcome != OverLimit || !d.Deny || d.Status != 429 || d.ResponseHeaders.Get("X-Envoy-Ratelimited") != "true" || d.GRPCStatus != 0 {
		t.Fatalf("over limit: %+v", d)
	}
	// gRPC requests get UNAVAILABLE by default (Envoy's 429 mapping).
	g := newReq("alice")
	g.Header.Set("Content-Type", "application/grpc")
	if d := flt.Check(ctx, g, route); d.GRPCStatus != codes.Unavailable {
		t.Fatalf("grpc over limit: %+v", d)
	}
	if d := flt.Check(ctx, newReq("bob"), route); d.Outcome != OK {
		t.Fatalf("other user: %+v", d)
	}
	f.mu.Lock()
	last := f.reqs[len(f.reqs)-1]
	f.mu.Unlock()
	if last.GetDomain() != "sidemesh" || last.GetHitsAddend() != 1 || render(last.GetDescriptors()) != "user=bob" {
		t.Fatalf("request to RLS: %v", last)
	}

	// Timeout: failure mode allow.
	f.delay.Store(int64(5 * time.Second))
	short, _ := New(filterConf(50*time.Millisecond, false), client, Options{Registerer: reg})
	if d := short.Check(ctx, newReq("carol"), route); d.Outcome != FailureModeAllowed || d.Deny {
		t.Fatalf("timeout, allow: %+v", d)
	}
	denyConf := filterConf(50*time.Millisecond, true)
	denyConf.RateLimitedAsResourceExhausted = true
	deny, _ := New(denyConf, client, Options{Registerer: reg})
	if d := deny.Check(ctx, newReq("carol"), route); d.Outcome != Error || !d.Deny || d.Status != 500 {
		t.Fatalf("timeout, deny: %+v", d)
	}
	// RLS gone: an error, same rules.
	f.delay.Store(0)
	stop()
	if d := short.Check(ctx, newReq("dave"), route); d.Outcome != FailureModeAllowed {
		t.Fatalf("rls down, allow: %+v", d)
	}
	if d := deny.Check(ctx, newReq("dave"), route); d.Status != 500 {
		t.Fatalf("rls down, deny: %+v", d)
	}
	if s := flt.Stats(); s.OK != 4 || s.OverLimit != 2 {
		t.Fatalf("stats: %+v", s)
	}
	if s := short.Stats(); s.FailureModeAllowed != 2 || s.Error != 2 {
		t.Fatalf("short stats: %+v", s)
	}
	if got := counterValue(t, reg, "over_limit"); got != 2 {
		t.Fatalf("prometheus over_limit = %v", got)
	}
}

func TestHandlerThroughHTTP(t *testing.T) {
	_, addr, _ := startFakeRLS(t, 2)
	conn, client, err := Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conf := filterConf(2*time.Second, false)
	conf.RateLimitedAsResourceExhausted = true
	flt, err := New(conf, client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var upstreamSaw atomic.Value
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamSaw.Store(r.Header.Get("x-rls-checked"))
		w.WriteHeader(200)
	})
	route := userRoute(t)
	srv := httptest.NewServer(flt.Handler(app, func(*http.Request) RouteInfo { return route }))
	defer srv.Close()
	get := func(ct string) *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/api/x", nil)
		req.Header.Set("x-user", "erin")
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 2 {
		if r := get(""); r.StatusCode != 200 || r.Header.Get("X-RateLimit-Remaining") == "" {
			t.Fatalf("request %d: %d %v", i, r.StatusCode, r.Header)
		}
	}
	if upstreamSaw.Load() != "1" {
		t.Fatal("RLS request headers did not reach the upstream")
	}
	if r := get(""); r.StatusCode != 429 || r.Header.Get("X-Envoy-Ratelimited") != "true" {
		t.Fatalf("over limit: %d %v", r.StatusCode, r.Header)
	}
	if r := get("application/grpc"); r.StatusCode != 200 || r.Header.Get("Grpc-Status") != "8" {
		t.Fatalf("grpc over limit: %d %v", r.StatusCode, r.Header)
	}
}

func TestRetryAfterAndFilterLevelLimits(t *testing.T) {
	_, addr, _ := startFakeRLS(t, 1)
	conn, client, err := Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conf := filterConf(2*time.Second, false)
	conf.EnableRetryAfterHeader = true
	// Filter-level rate_limits replace the route's (and ignore stage).
	conf.RateLimits = []*routev3.RateLimit{{Stage: wrapperspb.UInt32(3), Actions: []*routev3.RateLimit_Action{genericKey("tenant", "t1")}}}
	flt, err := New(conf, client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	route := userRoute(t)
	if d := flt.Check(context.Background(), newReq(""), route); d.Outcome != OK {
		t.Fatalf("filter-level descriptor not sent: %+v", d)
	}
	d := flt.Check(context.Background(), newReq("alice"), route)
	if d.Outcome != OverLimit || d.ResponseHeaders.Get("Retry-After") != "42" {
		t.Fatalf("retry-after: %+v", d)
	}
}

func TestPerRoute(t *testing.T) {
	vh := mustCompile(t, limits([]*routev3.RateLimit_Action{genericKey("k", "vh")}))
	base := RouteInfo{Route: mustCompile(t, limits([]*routev3.RateLimit_Action{genericKey("k", "route")})), VirtualHost: vh}
	f := &Filter{}
	r := newReq("")
	ri, err := base.WithPerRoute(&ratelimitv3.RateLimitPerRoute{VhRateLimits: ratelimitv3.RateLimitPerRoute_INCLUDE, Domain: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(f.Descriptors(r, ri)); got != "k=route|k=vh" || ri.Domain != "other" {
		t.Fatalf("include: %q domain %q", got, ri.Domain)
	}
	ri, _ = RouteInfo{VirtualHost: vh}.WithPerRoute(&ratelimitv3.RateLimitPerRoute{VhRateLimits: ratelimitv3.RateLimitPerRoute_IGNORE})
	if got := render(f.Descriptors(r, ri)); got != "" {
		t.Fatalf("ignore: %q", got)
	}
	ri, _ = base.WithPerRoute(&ratelimitv3.RateLimitPerRoute{RateLimits: limits([]*routev3.RateLimit_Action{genericKey("k", "per-route")})})
	if got := render(f.Descriptors(r, ri)); got != "k=per-route" {
		t.Fatalf("per-route rate_limits: %q", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if got := RLSCluster(filterConf(time.Second, false)); got != "rls" {
		t.Fatalf("RLSCluster = %q", got)
	}
	if _, err := New(&ratelimitv3.RateLimit{}, nil, Options{}); err == nil || !strings.Contains(err.Error(), "Domain") {
		t.Fatalf("missing domain: %v", err)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, result string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sidemesh_proxy_ratelimit_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}
