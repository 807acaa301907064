package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/sidemesh/sidemesh/internal/syncbuf"
	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// basicMesh: listener → route "/" → cluster "web" with the given endpoints.
func basicMesh(port uint32, rc *routev3.RouteConfiguration, clusters []*clusterv3.Cluster, eps ...types.Resource) mt.Mesh {
	m := mt.Mesh{Listeners: []types.Resource{mt.Listener("ingress", port, rc.Name)}, Routes: []types.Resource{rc}, Endpoints: eps}
	for _, c := range clusters {
		m.Clusters = append(m.Clusters, c)
	}
	return m
}

func TestRoutingHeadersAndCanary(t *testing.T) {
	for _, sotw := range []bool{false, true} {
		t.Run(fmt.Sprintf("sotw=%v", sotw), func(t *testing.T) {
			c := mt.StartCP(t)
			stable, canary, beta := mt.StartUpstream(t, "stable"), mt.StartUpstream(t, "canary"), mt.StartUpstream(t, "beta")
			port := mt.FreePort(t)
			hdrRoute := mt.RouteTo("/", "beta")
			hdrRoute.Match.Headers = []*routev3.HeaderMatcher{{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "tester"}}}}}
			hdrRoute.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-added", Value: "yes"}}}
			rw := mt.RouteTo("/old/", "stable")
			rw.GetRoute().PrefixRewrite = "/new/"
			split := &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "stable", Weight: wrapperspb.UInt32(80)}, {Name: "canary", Weight: wrapperspb.UInt32(20)}}}}}}}
			direct := &routev3.Route{Name: "direct", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/direct"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 418, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "teapot"}}}}}
			redirect := &routev3.Route{Name: "redir", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/moved"}},
				Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/here"}}}}
			rc := mt.RouteConfig("r1", direct, redirect, hdrRoute, rw, split)
			c.Push(t, basicMesh(port, rc, []*clusterv3.Cluster{mt.EDSCluster("stable"), mt.EDSCluster("canary"), mt.EDSCluster("beta")},
				mt.CLA("stable", mt.EP{U: stable}), mt.CLA("canary", mt.EP{U: canary}), mt.CLA("beta", mt.EP{U: beta})))
			runProxy(t, c, sotw)
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base+"/x", nil); return code == 200 })

			// Header match wins over the split, and adds a header.
			code, who, res := mt.Get(t, base+"/x", map[string]string{"x-user": "tester", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
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
			if _, _, res := mt.Get(t, base+"/old/page", nil); res == nil || res.Header.Get("X-Seen-Path") != "/new/page" {
				t.Fatalf("prefix rewrite: %v", res)
			}
			// Direct response and redirect.
			if code, _, _ := mt.Get(t, base+"/direct", nil); code != 418 {
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
				code, who, _ := mt.Get(t, base+"/split", nil)
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
	c := mt.StartCP(t)
	a, b := mt.StartUpstream(t, "a"), mt.StartUpstream(t, "b")
	port := mt.FreePort(t)
	r := mt.RouteTo("/", "svc")
	r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,connect-failure", NumRetries: wrapperspb.UInt32(2),
		PerTryTimeout: durationpb.New(200 * time.Millisecond),
		RetryBackOff:  &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(5 * time.Millisecond)}}
	c.Push(t, basicMesh(port, mt.RouteConfig("r", r), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: a})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })

	// 503 twice, then success: the client sees one 200.
	a.FailNext.Store(2)
	before := a.Hits.Load()
	if code, _, _ := mt.Get(t, base, nil); code != 200 {
		t.Fatalf("retried request: %d", code)
	}
	if got := a.Hits.Load() - before; got != 3 {
		t.Fatalf("upstream saw %d tries, want 3", got)
	}
	// Three 503s exceed num_retries=2: the client sees the 503.
	a.FailNext.Store(3)
	if code, _, _ := mt.Get(t, base, nil); code != 503 {
		t.Fatalf("exhausted retries: %d", code)
	}
	a.FailNext.Store(0)

	// Per-try timeout: a slow host, then a fast one via retry.
	a.Delay.Store(int64(2 * time.Second))
	c.Push(t, basicMesh(port, mt.RouteConfig("r", r), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: a}, mt.EP{U: b})))
	mt.Eventually(t, "two endpoints", func() bool { _, who, _ := mt.Get(t, base, nil); return who == "b" })
	for i := 0; i < 10; i++ {
		start := time.Now()
		code, who, _ := mt.Get(t, base, nil)
		if code != 200 || who != "b" {
			t.Fatalf("per-try timeout retry: %d from %q", code, who)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Fatalf("took %s: per-try timeout did not fire", d)
		}
	}
	// Only the slow host: the per-try timeouts exhaust retries → 504.
	c.Push(t, basicMesh(port, mt.RouteConfig("r", r), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: a})))
	mt.Eventually(t, "only slow host", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 504 })
}

func TestCircuitBreakerOverflow(t *testing.T) {
	c := mt.StartCP(t)
	a := mt.StartUpstream(t, "a")
	a.Delay.Store(int64(300 * time.Millisecond))
	port := mt.FreePort(t)
	cl := mt.EDSCluster("svc")
	cl.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(2)}}}
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{cl}, mt.CLA("svc", mt.EP{U: a})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	var ok, overflow, other atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, res := mt.Get(t, base, nil)
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
	c := mt.StartCP(t)
	good, bad := mt.StartUpstream(t, "good"), mt.StartUpstream(t, "bad")
	bad.Status.Store(500)
	port := mt.FreePort(t)
	cl := mt.EDSCluster("svc")
	cl.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionPercent: wrapperspb.UInt32(50)}
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{cl}, mt.CLA("svc", mt.EP{U: good}, mt.EP{U: bad})))
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	// Round robin alternates: after 3 consecutive 500s the bad host is ejected.
	for i := 0; i < 10; i++ {
		mt.Get(t, base, nil)
	}
	hitsBad := bad.Hits.Load()
	if hitsBad < 3 {
		t.Fatalf("bad host got %d requests before ejection, want ≥3", hitsBad)
	}
	for i := 0; i < 50; i++ {
		if code, who, _ := mt.Get(t, base, nil); code != 200 || who != "good" {
			t.Fatalf("after ejection: %d from %q", code, who)
		}
	}
	if bad.Hits.Load() != hitsBad {
		t.Fatalf("ejected host still got %d requests", bad.Hits.Load()-hitsBad)
	}

	// EDS Health: a host marked UNHEALTHY gets nothing.
	bad.Status.Store(0)
	third := mt.StartUpstream(t, "third")
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{cl},
		mt.CLA("svc", mt.EP{U: good}, mt.EP{U: third, Health: corev3.HealthStatus_UNHEALTHY}, mt.EP{U: mt.StartUpstream(t, "fourth")})))
	mt.Eventually(t, "fourth in rotation", func() bool { _, who, _ := mt.Get(t, base, nil); return who == "fourth" })
	for i := 0; i < 60; i++ {
		if code, who, _ := mt.Get(t, base, nil); code != 200 || who == "third" {
			t.Fatalf("unhealthy endpoint used: %d from %q", code, who)
		}
	}
	if third.Hits.Load() != 0 {
		t.Fatalf("unhealthy endpoint got %d requests", third.Hits.Load())
	}
}

func TestNackKeepsLastGood(t *testing.T) {
	c := mt.StartCP(t)
	a := mt.StartUpstream(t, "a")
	port := mt.FreePort(t)
	good := mt.Mesh{Listeners: []types.Resource{mt.Listener("l", port, "r")}, Routes: []types.Resource{mt.RouteConfig("r", mt.RouteTo("/", "svc"))},
		Clusters: []types.Resource{mt.EDSCluster("svc")}, Endpoints: []types.Resource{mt.CLA("svc", mt.EP{U: a})}}
	c.Push(t, good)
	_, xc := runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })

	// A route with an invalid regex passes proto validation but not ours.
	bad := mt.RouteConfig("r", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "svc"}}}})
	c.Push(t, mt.Mesh{Listeners: good.Listeners, Routes: []types.Resource{bad}, Clusters: good.Clusters, Endpoints: good.Endpoints})
	mt.Eventually(t, "NACK at the server", func() bool { return len(c.NackList()) > 0 })
	msg := c.NackList()[0]
	if !strings.Contains(msg, "regex") || !strings.Contains(msg, `"r"`) {
		t.Fatalf("NACK detail should name the route config and the regex: %q", msg)
	}
	if st := xc.Status(); st.LastNack["RDS"] == "" {
		t.Fatalf("client status has no NACK: %+v", st)
	}
	for i := 0; i < 20; i++ {
		if code, _, _ := mt.Get(t, base, nil); code != 200 {
			t.Fatalf("after NACK: %d", code)
		}
	}
	// A fixed config is accepted again.
	fixed := mt.RouteConfig("r", mt.RouteTo("/", "svc"))
	fixed.VirtualHosts[0].Routes[0].ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-fixed", Value: "1"}}}
	c.Push(t, mt.Mesh{Listeners: good.Listeners, Routes: []types.Resource{fixed}, Clusters: good.Clusters, Endpoints: good.Endpoints})
	mt.Eventually(t, "fixed config", func() bool { _, _, res := mt.Get(t, base, nil); return res != nil && res.Header.Get("X-Fixed") == "1" })
}

func TestKeepsServingWhileControlPlaneIsAway(t *testing.T) {
	c := mt.StartCP(t)
	a, b := mt.StartUpstream(t, "a"), mt.StartUpstream(t, "b")
	port := mt.FreePort(t)
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: a})))
	_, xc := runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	c.Stop()
	mt.Eventually(t, "client notices", func() bool { return !xc.Connected() })
	for i := 0; i < 20; i++ {
		if code, who, _ := mt.Get(t, base, nil); code != 200 || who != "a" {
			t.Fatalf("while the control plane is away: %d from %q", code, who)
		}
	}
	// Back with a change: the client reconnects (jittered back-off) and applies it.
	c.Push(t, basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: b})))
	c.Start(t)
	mt.Eventually(t, "new endpoint after reconnect", func() bool { _, who, _ := mt.Get(t, base, nil); return who == "b" })
}

func TestRemovedListenerDrains(t *testing.T) {
	c := mt.StartCP(t)
	a := mt.StartUpstream(t, "a")
	port, port2 := mt.FreePort(t), mt.FreePort(t)
	both := basicMesh(port, mt.RouteConfig("r", mt.RouteTo("/", "svc")), []*clusterv3.Cluster{mt.EDSCluster("svc")}, mt.CLA("svc", mt.EP{U: a}))
	both.Listeners = append(both.Listeners, mt.Listener("second", port2, "r"))
	c.Push(t, both)
	runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	// A slow request is in flight on the listener that goes away.
	a.Delay.Store(int64(700 * time.Millisecond))
	res := make(chan int, 1)
	go func() { code, _, _ := mt.Get(t, base+"/slow", nil); res <- code }()
	mt.Eventually(t, "slow request at the upstream", func() bool { return a.Hits.Load() >= 2 })
	only := both
	only.Listeners = both.Listeners[1:]
	c.Push(t, only)
	if code := <-res; code != 200 {
		t.Fatalf("in-flight request on the removed listener: %d", code)
	}
	a.Delay.Store(0)
	mt.Eventually(t, "removed listener closed", func() bool {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if code, _, _ := mt.Get(t, fmt.Sprintf("http://127.0.0.1:%d", port2), nil); code != 200 {
		t.Fatalf("remaining listener: %d", code)
	}
}

func TestAccessLog(t *testing.T) {
	a := mt.StartUpstream(t, "a")
	port := mt.FreePort(t)
	var buf syncbuf.Buffer
	px := server.New(server.Options{Metrics: stats.New(nil), AccessLog: &buf, DrainTimeout: time.Second})
	defer px.Shutdown(context.Background())
	r := xds.NewResources()
	l := mt.Listener("l", port, "r")
	r.Listeners = map[string]*listenerv3.Listener{"l": l}
	r.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", mt.RouteTo("/", "svc"))}
	cl := mt.EDSCluster("svc")
	r.Clusters = map[string]*clusterv3.Cluster{"svc": cl}
	r.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{"svc": mt.CLA("svc", mt.EP{U: a})}
	if err := px.Apply(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	code, _, _ := mt.Get(t, fmt.Sprintf("http://127.0.0.1:%d/logged?x=1", port), map[string]string{"X-Request-Id": "rid-1"})
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	mt.Eventually(t, "access log line", func() bool { return strings.Contains(buf.String(), `"request_id":"rid-1"`) })
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(buf.String())), &line); err != nil {
		t.Fatalf("access log is not one JSON line: %v: %s", err, buf.String())
	}
	if line["path"] != "/logged?x=1" || line["response_code"] != float64(200) || line["upstream_cluster"] != "svc" || line["upstream_host"] != a.Addr {
		t.Fatalf("access log fields: %v", line)
	}
}
