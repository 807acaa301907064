package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

// BenchmarkProxyRequest measures one keep-alive HTTP/1.1 request through the
// full listener → route → cluster → upstream path, clients in parallel.
func BenchmarkProxyRequest(b *testing.B) {
	up := mt.StartUpstream(b, "up")
	port := mt.FreePort(b)
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second})
	defer px.Shutdown(context.Background())
	r := xds.NewResources()
	r.Listeners = map[string]*listenerv3.Listener{"l": mt.Listener("l", port, "r")}
	r.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", mt.RouteTo("/api", "other"), mt.RouteTo("/", "svc"))}
	c := mt.StaticCluster("svc", mt.EP{U: up})
	r.Clusters = map[string]*clusterv3.Cluster{"svc": c}
	if err := px.Apply(context.Background(), r); err != nil {
		b.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/bench", port)
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	cl := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := cl.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				b.Errorf("status %d", res.StatusCode)
				return
			}
		}
	})
}
