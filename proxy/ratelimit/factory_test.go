package ratelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestFactory: the proxy-core shape (typed_config → handler wrapper, route
// from the request), the route's rate_limits and per-route config, and
// the shared RLS connection following the cluster's endpoints.
func TestFactory(t *testing.T) {
	f1, a1, stop1 := startFakeRLS(t, 2)
	f2, a2, _ := startFakeRLS(t, 100)
	var mu sync.Mutex
	eps := []string{a1}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	route := &routev3.Route{Name: "api", Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		RateLimits: limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)})}}}
	other := &routev3.Route{Name: "other", Action: &routev3.Route_Route{Route: &routev3.RouteAction{}},
		TypedPerFilterConfig: map[string]*anypb.Any{}}
	pr, _ := anypb.New(&ratelimitv3.RateLimitPerRoute{VhRateLimits: ratelimitv3.RateLimitPerRoute_IGNORE})
	other.TypedPerFilterConfig["envoy.filters.http.ratelimit"] = pr
	vh := &routev3.VirtualHost{Name: "vh", RateLimits: limits([]*routev3.RateLimit_Action{genericKey("k", "vh")})}
	fa := NewFactory(FactoryOptions{Ctx: ctx, PollInterval: 20 * time.Millisecond,
		Endpoints: func(cluster string) []string {
			mu.Lock()
			defer mu.Unlock()
			if cluster != "rls" {
				return nil
			}
			return append([]string(nil), eps...)
		},
		RouteOf: func(r *http.Request) (*routev3.VirtualHost, *routev3.Route, string, bool) {
			if r.URL.Path == "/other" {
				return vh, other, "web", true
			}
			return vh, route, "api", true
		}})
	tc, _ := anypb.New(filterConf(time.Second, false))
	wrap, err := fa.Build("envoy.filters.http.ratelimit", tc)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer srv.Close()
	get := func(path string) int {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("x-user", "zed")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i, want := range []int{200, 200, 429} {
		if got := get("/api"); got != want {
			t.Fatalf("request %d: %d want %d", i, got, want)
		}
	}
	// vh_rate_limits IGNORE and no route limits: no RLS call.
	n := f1.calls()
	if got := get("/other"); got != 200 || f1.calls() != n {
		t.Fatalf("/other: %d, RLS calls %d → %d", got, n, f1.calls())
	}
	// The RLS cluster moves: the shared connection follows.
	stop1()
	mu.Lock()
	eps = []string{a2}
	mu.Unlock()
	waitUntil(t, "requests reach the new RLS endpoint", func() bool {
		get("/api")
		return f2.calls() > 0
	})
	// Bad typed_config is an error naming the filter.
	bad, _ := anypb.New(&ratelimitv3.RateLimit{Domain: "x"})
	if _, err := fa.Build("rl", bad); err == nil {
		t.Fatal("config without rate_limit_service accepted")
	}
}
