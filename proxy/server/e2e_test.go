package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// basicMesh: listener → route "/" → cluster "web" with the given endpoints.
func basicMesh(port uint32, rc *routev3.RouteConfiguration, clusters []*clusterv3.Cluster, eps ...types.Resource) mesh {
	m := mesh{listeners: []types.Resource{listener("ingress", port, rc.Name)}, routes: []types.Resource{rc}, endpoints: eps}
	for _, c := range clusters {
		m.clusters = append(m.clusters, c)
	}
	return m
}

func TestRoutingHeadersAndCanary(t *testing.T) {
	for _, sotw := range []bool{false, true} {
		t.Run(fmt.Sprintf("sotw=%v", sotw), func(t *testing.T) {
			c := startCP(t)
			stable, canary, beta := startUpstream(t, "stable"), startUpstream(t, "canary"), startUpstream(t, "beta")
			port := freePort(t)
			hdrRoute := routeTo("/", "beta")
			hdrRoute.Match.Headers = []*routev3.HeaderMatcher{{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "tester"}}}}}
			hdrRoute.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-added", Value: "yes"}}}
			rw := routeTo("/old/", "stable")
			rw.GetRoute().PrefixRewrite = "/new/"
			split := &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "stable", Weight: wrapperspb.UInt32(80)}, {Name: "canary", Weight: wrapperspb.UInt32(20)}}}}}}}
			direct := &routev3.Route{Name: "direct", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/direct"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 418, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "teapot"}}}}}
			redirect := &routev3.Route{Name: "redir", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/moved"}},
				Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/here"}}}}
			rc := routeConfig("r1", direct, redirect, hdrRoute, rw, split)
			c.push(t, basicMesh(port, rc, []*clusterv3.Cluster{edsCluster("stable"), edsCluster("canary"), edsCluster("beta")},
				cla("stable", ep{u: stable}), cla("canary", ep{u: canary}), cla("beta", ep{u: beta})))
			runProxy(t, c, sotw)
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			eventually(t, "proxy serving", func() bool { code, _, _ := get(t, base+"/x", nil); return code == 200 })

			// Header match wins over the split, and adds a header.
			code, who, res := get(t, base+"/x", map[string]string{"x-user": "tester", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
			if code != 200 || who != "beta" {
				t.Fatalf("header route: got %d from %q", code, who)
			}
			if res.Header.Get("X-Seen-Added") != "yes" || res.Header.Get("X-Seen-Request-Id") == "" || res.Header.Get("X-Seen-Timeout") != "15000" {
				t.Fatalf("request headers not set: added=%q id=%q timeout=%q", res.Header.Get("X-Seen-Added"), res.Header.Get("X-Seen-Request-Id"), res.Header.Get("X-Seen-Timeout"))
			}
			if res.Header.Get("X-Seen-Traceparent") == "" || res.Header.Get("X-Envoy-Upstream-Service-Time") == "" {
				t.Fatalf("traceparent or upstream service time missing")
			}
			// Prefix rewrite.
			if _, _, res := get(t, base+"/old/page", nil); res == nil || res.Header.Get("X-Seen-Path") != "/new/page" {
				t.Fatalf("prefix rewrite: %v", res)
			}
			// Direct response and redirect.
			if code, _, _ := get(t, base+"/direct", nil); code != 418 {
				t.Fatalf("direct response: %d", code)
			}
			req, _ := http.NewRequest("GET", base+"/moved", nil)
			res2, err := http.DefaultTransport.RoundTrip(req)
			if err != nil || res2.StatusCode != 301 || !strings.HasSuffix(res2.Header.Get("Location"), "/here") {
				t.Fatalf("redirect: %v %v", res2, err)
			}
			res2.Body.Close()

			// 80/20 split: 1000 requests, canary share within 4.5 sigma of 20%.
			n, canaryN := 1000, 0
			for i := 0; i < n; i++ {
				code, who, _ := get(t, base+"/split", nil)
				if code != 200 {
					t.Fatalf("split request %d: %d", i, code)
				}
				if who == "canary" {
					canaryN++
				}
			}
			if canaryN < 140 || canaryN > 260 {
				t.Fatalf("canary got %d of %d, want about 200", canaryN, n)
			}
		})
	}
}

func TestRetriesAndPerTryTimeout(t *testing.T) {
	c := startCP(t)
	a, b := startUpstream(t, "a"), startUpstream(t, "b")
	port := freePort(t)
	r := routeTo("/", "svc")
	r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,connect-failure", NumRetries: wrapperspb.UInt32(2),
		PerTryTimeout: durationpb.New(200 * time.Millisecond),
		RetryBackOff:  &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(5 * time.Millisecond)}}
	c.push(t, basicMesh(port, routeConfig("r", r), []*clusterv3.Cluster{edsCluster("svc")}, cla("svc", ep{u: a})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, "proxy serving", func() bool { code, _, _ := get(t, base, nil); return code == 200 })

	// 503 twice, then success: the client sees one 200.
	a.failNext.Store(2)
	before := a.hits.Load()
	if code, _, _ := get(t, base, nil); code != 200 {
		t.Fatalf("retried request: %d", code)
	}
	if got := a.hits.Load() - before; got != 3 {
		t.Fatalf("upstream saw %d tries, want 3", got)
	}
	// Three 503s exceed num_retries=2: the client sees the 503.
	a.failNext.Store(3)
	if code, _, _ := get(t, base, nil); code != 503 {
		t.Fatalf("exhausted retries: %d", code)
	}
	a.failNext.Store(0)

	// Per-try timeout: a slow host, then a fast one via retry.
	a.delay.Store(int64(2 * time.Second))
	c.push(t, basicMesh(port, routeConfig("r", r), []*clusterv3.Cluster{edsCluster("svc")}, cla("svc", ep{u: a}, ep{u: b})))
	eventually(t, "two endpoints", func() bool { _, who, _ := get(t, base, nil); return who == "b" })
	for i := 0; i < 10; i++ {
		start := time.Now()
		code, who, _ := get(t, base, nil)
		if code != 200 || who != "b" {
			t.Fatalf("per-try timeout retry: %d from %q", code, who)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Fatalf("took %s: per-try timeout did not fire", d)
		}
	}
	// Only the slow host: the per-try timeouts exhaust retries → 504.
	c.push(t, basicMesh(port, routeConfig("r", r), []*clusterv3.Cluster{edsCluster("svc")}, cla("svc", ep{u: a})))
	eventually(t, "only slow host", func() bool { code, _, _ := get(t, base, nil); return code == 504 })
}

func TestCircuitBreakerOverflow(t *testing.T) {
	c := startCP(t)
	a := startUpstream(t, "a")
	a.delay.Store(int64(300 * time.Millisecond))
	port := freePort(t)
	cl := edsCluster("svc")
	cl.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(2)}}}
	c.push(t, basicMesh(port, routeConfig("r", routeTo("/", "svc")), []*clusterv3.Cluster{cl}, cla("svc", ep{u: a})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, "proxy serving", func() bool { code, _, _ := get(t, base, nil); return code == 200 })
	var ok, overflow, other atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, res := get(t, base, nil)
			switch {
			case code == 200:
				ok.Add(1)
			case code == 503 && res.Header.Get("X-Envoy-Overloaded") == "true":
				overflow.Add(1)
			default:
				other.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() < 1 || ok.Load() > 2 || overflow.Load() != 8-ok.Load() || other.Load() != 0 {
		t.Fatalf("ok=%d overflow=%d other=%d, want ≤2 ok and the rest overflow", ok.Load(), overflow.Load(), other.Load())
	}
}

func TestOutlierEjectionAndUnhealthyEndpoint(t *testing.T) {
	c := startCP(t)
	good, bad := startUpstream(t, "good"), startUpstream(t, "bad")
	bad.status.Store(500)
	port := freePort(t)
	cl := edsCluster("svc")
	cl.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: wrapperspb.UInt32(50)}
	c.push(t, basicMesh(port, routeConfig("r", routeTo("/", "svc")), []*clusterv3.Cluster{cl}, cla("svc", ep{u: good}, ep{u: bad})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, "proxy serving", func() bool { code, _, _ := get(t, base, nil); return code == 200 })
	// Round robin alternates: after 3 consecutive 500s the bad host is ejected.
	for i := 0; i < 10; i++ {
		get(t, base, nil)
	}
	hitsBad := bad.hits.Load()
	if hitsBad < 3 {
		t.Fatalf("bad host got %d requests before ejection, want ≥3", hitsBad)
	}
	for i := 0; i < 50; i++ {
		if code, who, _ := get(t, base, nil); code != 200 || who != "good" {
			t.Fatalf("after ejection: %d from %q", code, who)
		}
	}
	if bad.hits.Load() != hitsBad {
		t.Fatalf("ejected host still got %d requests", bad.hits.Load()-hitsBad)
	}

	// EDS health: a host marked UNHEALTHY gets nothing.
	bad.status.Store(0)
	third := startUpstream(t, "third")
	c.push(t, basicMesh(port, routeConfig("r", routeTo("/", "svc")), []*clusterv3.Cluster{cl},
		cla("svc", ep{u: good}, ep{u: third, health: corev3.HealthStatus_UNHEALTHY}, ep{u: startUpstream(t, "fourth")})))
	eventually(t, "fourth in rotation", func() bool { _, who, _ := get(t, base, nil); return who == "fourth" })
	for i := 0; i < 60; i++ {
		if code, who, _ := get(t, base, nil); code != 200 || who == "third" {
			t.Fatalf("unhealthy endpoint used: %d from %q", code, who)
		}
	}
	if third.hits.Load() != 0 {
		t.Fatalf("unhealthy endpoint got %d requests", third.hits.Load())
	}
}

func TestNackKeepsLastGood(t *testing.T) {
	c := startCP(t)
	a := startUpstream(t, "a")
	port := freePort(t)
	good := mesh{listeners: []types.Resource{listener("l", port, "r")}, routes: []types.Resource{routeConfig("r", routeTo("/", "svc"))},
		clusters: []types.Resource{edsCluster("svc")}, endpoints: []types.Resource{cla("svc", ep{u: a})}}
	c.push(t, good)
	_, xc := runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, "proxy serving", func() bool { code, _, _ := get(t, base, nil); return code == 200 })

	// A route with an invalid regex passes proto validation but not ours.
	bad := routeConfig("r", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "svc"}}}})
	c.push(t, mesh{listeners: good.listeners, routes: []types.Resource{bad}, clusters: good.clusters, endpoints: good.endpoints})
	eventually(t, "NACK at the server", func() bool { return len(c.nackList()) > 0 })
	msg := c.nackList()[0]
	if !strings.Contains(msg, "regex") || !strings.Contains(msg, `"r"`) {
		t.Fatalf("NACK detail should name the route config and the regex: %q", msg)
	}
	if st := xc.Status(); st.LastNack["RDS"] == "" {
		t.Fatalf("client status has no NACK: %+v", st)
	}
	for i := 0; i < 20; i++ {
		if code, _, _ := get(t, base, nil); code != 200 {
			t.Fatalf("after NACK: %d", code)
		}
	}
	// A fixed config is accepted again.
	fixed := routeConfig("r", routeTo("/", "svc"))
	fixed.VirtualHosts[0].Routes[0].ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-fixed", Value: "1"}}}
	c.push(t, mesh{listeners: good.listeners, routes: []types.Resource{fixed}, clusters: good.clusters, endpoints: good.endpoints})
	eventually(t, "fixed config", func() bool { _, _, res := get(t, base, nil); return res != nil && res.Header.Get("X-Fixed") == "1" })
}
