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

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
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
	c := mt.StartCP(t)
	ups := []*mt.Upstream{mt.StartUpstream(t, "u0"), mt.StartUpstream(t, "u1"), mt.StartUpstream(t, "u2")}
	port := mt.FreePort(t)
	build := func(i int) mt.Mesh {
		w := uint32(i%9 + 1)
		r := &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(w)}, {Name: "b", Weight: wrapperspb.UInt32(10 - w)}}}}}}}
		r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-gen", Value: fmt.Sprint(i)}}}
		ca, cb := mt.EDSCluster("a"), mt.EDSCluster("b")
		if i%3 == 1 {
			ca.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		}
		if i%4 == 2 {
			cb.LbPolicy = clusterv3.Cluster_RANDOM
		}
		// Endpoints rotate: each cluster always keeps at least one live host.
		epsA := []mt.EP{{U: ups[i%3]}}
		if i%2 == 0 {
			epsA = append(epsA, mt.EP{U: ups[(i+1)%3]})
		}
		epsB := []mt.EP{{U: ups[(i+2)%3]}, {U: ups[(i+1)%3], Weight: uint32(i%5 + 1)}}
		l := mt.Listener("ingress", port, "r")
		if i%10 == 5 {
			l = mt.Listener("ingress", port, "r") // same address, fresh HCM object
			l.ListenerFilters = nil
		}
		return mt.Mesh{Listeners: []types.Resource{l}, Routes: []types.Resource{mt.RouteConfig("r", r)},
			Clusters: []types.Resource{ca, cb}, Endpoints: []types.Resource{mt.CLA("a", epsA...), mt.CLA("b", epsB...)}}
	}
	c.Push(t, build(0))
	px, _ := runProxy(t, c, false)
	url := fmt.Sprintf("http://127.0.0.1:%d/churn", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, url, nil); return code == 200 })
	conns := 64
	if raceEnabled {
		conns = 8
	}
	lg := startLoad(url, conns)
	for i := 1; i <= 100; i++ {
		c.Push(t, build(i))
		want := fmt.Sprint(i)
		mt.Eventually(t, "generation "+want, func() bool {
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
	if _, _, res := mt.Get(t, url, nil); res == nil || res.Header.Get("X-Gen") != "100" {
		t.Fatalf("last generation not served")
	}
}

// TestNewClusterAndRouteInOnePush adds a new cluster and moves the route to
// it in the same snapshot, 30 times under load: the ADS server sends CDS, EDS
// and RDS in any order, and no request may fail.
func TestNewClusterAndRouteInOnePush(t *testing.T) {
	c := mt.StartCP(t)
	ups := []*mt.Upstream{mt.StartUpstream(t, "u0"), mt.StartUpstream(t, "u1")}
	port := mt.FreePort(t)
	build := func(i int) mt.Mesh {
		name := fmt.Sprintf("c%d", i)
		return mt.Mesh{Listeners: []types.Resource{mt.Listener("l", port, "r")},
			Routes:    []types.Resource{mt.RouteConfig("r", mt.RouteTo("/", name))},
			Clusters:  []types.Resource{mt.EDSCluster(name)},
			Endpoints: []types.Resource{mt.CLA(name, mt.EP{U: ups[i%2]})}}
	}
	c.Push(t, build(0))
	px, _ := runProxy(t, c, false)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, url, nil); return code == 200 })
	conns := 32
	if raceEnabled {
		conns = 8
	}
	lg := startLoad(url, conns)
	for i := 1; i <= 30; i++ {
		c.Push(t, build(i))
		want := fmt.Sprintf("c%d", i)
		mt.Eventually(t, "route to "+want, func() bool {
			s := px.Snapshot()
			return s.Clusters[want] != nil && s.Routes["r"] != nil && len(s.Routes["r"].ClusterNames()) == 1 && s.Routes["r"].ClusterNames()[0] == want
		})
		time.Sleep(10 * time.Millisecond)
	}
	lg.stop()
	if lg.failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while clusters were swapped; first: %v", lg.failed.Load(), lg.ok.Load()+lg.failed.Load(), lg.firstErr.Load())
	}
	t.Logf("%d requests, 0 failures across 30 new-cluster pushes", lg.ok.Load())
}
