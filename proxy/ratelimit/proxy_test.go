package ratelimit

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

// TestThroughProxyCore runs the filter inside the real proxy core
// (proxy/server) through its FilterFactory hook: the listener's HCM carries
// envoy.filters.http.ratelimit, the route carries rate_limits, the RLS
// cluster's endpoints come from EDS. 3 requests pass, then 429 without
// reaching the upstream; other users are unaffected.
func TestThroughProxyCore(t *testing.T) {
	_, rlsAddr, _ := startFakeRLS(t, 3)
	_, p, _ := net.SplitHostPort(rlsAddr)
	rlsPort, _ := strconv.Atoi(p)
	up := mt.StartUpstream(t, "api")
	port := mt.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var px *server.Proxy
	rlf := NewFactory(FactoryOptions{Ctx: ctx, LocalCluster: "ingress",
		Endpoints: func(cluster string) []string { return px.HostAddrs(cluster) },
		RouteOf:   server.ResolvedRoute})
	px = server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second,
		Filters: map[string]server.FilterFactory{TypeURL: rlf.Build}})
	defer px.Shutdown(context.Background())

	l := mt.Listener("l", port, "r")
	var h hcmv3.HttpConnectionManager
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	rc, _ := anypb.New(filterConf(time.Second, false))
	h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.ratelimit", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rc}}}, h.HttpFilters...)
	a, _ := anypb.New(&h)
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	rt := mt.RouteTo("/api", "api")
	rt.GetRoute().RateLimits = limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)})

	res := xds.NewResources()
	res.Listeners = map[string]*listenerv3.Listener{"l": l}
	res.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", rt)}
	res.Clusters = map[string]*clusterv3.Cluster{"api": mt.EDSCluster("api"), "rls": mt.EDSCluster("rls")}
	res.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{
		"api": mt.CLA("api", mt.EP{U: up}),
		"rls": mt.CLA("rls", mt.EP{Port: uint32(rlsPort)}),
	}
	if err := px.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/api/x", port)
	var codes []int
	for range 5 {
		code, _, _ := mt.Get(t, url, map[string]string{"x-user": "kim"})
		codes = append(codes, code)
	}
	if fmt.Sprint(codes) != "[200 200 200 429 429]" {
		t.Fatalf("codes %v", codes)
	}
	if up.Hits.Load() != 3 {
		t.Fatalf("upstream saw %d requests, want 3", up.Hits.Load())
	}
	if code, _, r := mt.Get(t, url, map[string]string{"x-user": "lee"}); code != 200 || r.Header.Get("X-RateLimit-Remaining") != "2" {
		t.Fatalf("other user: %d %v", code, r.Header)
	}
}
