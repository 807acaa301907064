package ratelimit

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
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

// startProxyPair runs the proxy core with two listeners on the same
// routes: one without HTTP filters, one with the rate limit filter calling
// rlsAddr (on the batch stream, or unary as Envoy does). It returns both
// base URLs.
func startProxyPair(tb testing.TB, rlsAddr string, unary bool) (plain, limited string) {
	_, p, _ := net.SplitHostPort(rlsAddr)
	rlsPort, _ := strconv.Atoi(p)
	up := mt.StartUpstream(tb, "api")
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	var px *server.Proxy
	rlf := NewFactory(FactoryOptions{Ctx: ctx,
		Endpoints: func(cluster string) []string { return px.HostAddrs(cluster) },
		RouteOf:   server.ResolvedRoute, Unary: unary})
	px = server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second,
		Filters: map[string]server.FilterFactory{TypeURL: rlf.Build}})
	tb.Cleanup(func() { px.Shutdown(context.Background()) })

	p1, p2 := mt.FreePort(tb), mt.FreePort(tb)
	l2 := mt.Listener("limited", p2, "r")
	var h hcmv3.HttpConnectionManager
	if err := l2.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		tb.Fatal(err)
	}
	rc, _ := anypb.New(filterConf(time.Second, false))
	h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.ratelimit", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rc}}}, h.HttpFilters...)
	a, _ := anypb.New(&h)
	l2.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	rt := mt.RouteTo("/", "api")
	rt.GetRoute().RateLimits = limits([]*routev3.RateLimit_Action{reqHeaders("x-user", "user", false)})
	res := xds.NewResources()
	res.Listeners = map[string]*listenerv3.Listener{"plain": mt.Listener("plain", p1, "r"), "limited": l2}
	res.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", rt)}
	res.Clusters = map[string]*clusterv3.Cluster{"api": mt.EDSCluster("api"), "rls": mt.EDSCluster("rls")}
	res.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{
		"api": mt.CLA("api", mt.EP{U: up}),
		"rls": mt.CLA("rls", mt.EP{Port: uint32(rlsPort)}),
	}
	if err := px.Apply(context.Background(), res); err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d/x", p1), fmt.Sprintf("http://127.0.0.1:%d/x", p2)
}

// loadHTTP sends b.N GETs over conc keep-alive workers (one user each)
// and returns the latencies; any non-200 fails the benchmark.
func loadHTTP(b *testing.B, url string, conc int) []time.Duration {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, b.N/conc+1)
			for next.Add(1) <= int64(b.N) {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("x-user", "u"+strconv.Itoa(w))
				s := time.Now()
				resp, err := cl.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				local = append(local, time.Since(s))
				if resp.StatusCode != 200 {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	return lat
}
