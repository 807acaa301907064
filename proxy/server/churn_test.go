package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// loadGen keeps n keep-alive clients busy and counts every failure.
type loadGen struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func startLoad(url string, n int) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	lg := &loadGen{cancel: cancel}
	tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}
	for i := 0; i < n; i++ {
		lg.wg.Add(1)
		go func() {
			defer lg.wg.Done()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for ctx.Err() == nil {
				res, err := c.Get(url)
				if err != nil {
					lg.failed.Add(1)
					lg.firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					lg.failed.Add(1)
					lg.firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d (%s)", res.StatusCode, res.Header.Get("X-Upstream")))
					continue
				}
				lg.ok.Add(1)
			}
		}()
	}
	return lg
}

func (lg *loadGen) stop() {
	lg.cancel()
	lg.wg.Wait()
}

// TestConfigChurnUnderLoad pushes 100 route/cluster/endpoint/listener changes
// while 64 keep-alive clients send requests: not one may fail.
func TestConfigChurnUnderLoad(t *testing.T) {
	c := startCP(t)
	ups := []*upstream{startUpstream(t, "u0"), startUpstream(t, "u1"), startUpstream(t, "u2")}
	port := freePort(t)
	build := func(i int) mesh {
		w := uint32(i%9 + 1)
		r := &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(w)}, {Name: "b", Weight: wrapperspb.UInt32(10 - w)}}}}}}}
		r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-gen", Value: fmt.Sprint(i)}}}
		ca, cb := edsCluster("a"), edsCluster("b")
		if i%3 == 1 {
			ca.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		}
		if i%4 == 2 {
			cb.LbPolicy = clusterv3.Cluster_RANDOM
		}
		// Endpoints rotate: each cluster always keeps at least one live host.
		epsA := []ep{{u: ups[i%3]}}
		if i%2 == 0 {
			epsA = append(epsA, ep{u: ups[(i+1)%3]})
		}
		epsB := []ep{{u: ups[(i+2)%3]}, {u: ups[(i+1)%3], weight: uint32(i%5 + 1)}}
		l := listener("ingress", port, "r")
		if i%10 == 5 {
			l = listener("ingress", port, "r") // same address, fresh HCM object
			l.ListenerFilters = nil
		}
		return mesh{listeners: []types.Resource{l}, routes: []types.Resource{routeConfig("r", r)},
			clusters: []types.Resource{ca, cb}, endpoints: []types.Resource{cla("a", epsA...), cla("b", epsB...)}}
	}
	c.push(t, build(0))
	px, _ := runProxy(t, c, false)
	url := fmt.Sprintf("http://127.0.0.1:%d/churn", port)
	eventually(t, "proxy serving", func() bool { code, _, _ := get(t, url, nil); return code == 200 })
	conns := 64
	if raceEnabled {
		conns = 8
	}
	lg := startLoad(url, conns)
	for i := 1; i <= 100; i++ {
		c.push(t, build(i))
		want := fmt.Sprint(i)
		eventually(t, "generation "+want, func() bool {
			rc := px.Snapshot().Resources.Routes["r"]
			return rc != nil && rc.VirtualHosts[0].Routes[0].ResponseHeadersToAdd[0].Header.Value == want
		})
		time.Sleep(5 * time.Millisecond) // let some requests run on each generation
	}
	lg.stop()
	if lg.failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during churn; first: %v", lg.failed.Load(), lg.ok.Load()+lg.failed.Load(), lg.firstErr.Load())
	}
	if lg.ok.Load() < 500 {
		t.Fatalf("only %d requests completed: load did not run", lg.ok.Load())
	}
	t.Logf("%d requests, 0 failures across 100 config generations", lg.ok.Load())
	if _, _, res := get(t, url, nil); res == nil || res.Header.Get("X-Gen") != "100" {
		t.Fatalf("last generation not served")
	}
}
