package translate

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

var update = flag.Bool("update", false, "rewrite golden files")

func loadExample(t *testing.T) *model.Mesh {
	t.Helper()
	m, err := model.Load("../examples/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func byName[T types.Resource](t *testing.T, rs []types.Resource, name string) T {
	t.Helper()
	for _, r := range rs {
		if cachev3.GetResourceName(r) == name {
			return r.(T)
		}
	}
	t.Fatalf("no resource %q among %d", name, len(rs))
	var zero T
	return zero
}

func hcmOf(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	var h hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	return &h
}

func filterNames(h *hcmv3.HttpConnectionManager) []string {
	var out []string
	for _, f := range h.GetHttpFilters() {
		out = append(out, f.GetName())
	}
	return out
}

func TestExampleTranslation(t *testing.T) {
	m := loadExample(t)
	out, err := Build(m, Health{{Cluster: "web", Address: "127.0.0.1", Port: 15101}: corev3.HealthStatus_UNHEALTHY})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{GroupMesh, GroupHDS, ProxyGroup("web-sidecar"), ProxyGroup("api-sidecar"), ProxyGroup("ingress")} {
		if _, ok := out.Groups[g]; !ok {
			t.Errorf("missing group %s", g)
		}
	}

	// Health checks only for HDS.
	if hc := byName[*clusterv3.Cluster](t, out.Groups[GroupHDS].Clusters, "web").GetHealthChecks(); len(hc) != 1 || hc[0].GetHttpHealthCheck().GetPath() != "/healthz" {
		t.Errorf("hds web health checks: %v", hc)
	}
	for _, g := range []string{GroupMesh, ProxyGroup("ingress"), ProxyGroup("web-sidecar")} {
		if hc := byName[*clusterv3.Cluster](t, out.Groups[g].Clusters, "web").GetHealthChecks(); len(hc) != 0 {
			t.Errorf("group %s got health checks", g)
		}
	}
	rls := byName[*clusterv3.Cluster](t, out.Groups[ProxyGroup("ingress")].Clusters, "rls")
	if _, ok := rls.GetTypedExtensionProtocolOptions()[HTTPProtocolOptionsKey]; !ok {
		t.Error("rls cluster is not http2")
	}

	// Ingress: public listener, ratelimit filter before router, rate-limited /api.
	ing := out.Groups[ProxyGroup("ingress")]
	l := byName[*listenerv3.Listener](t, ing.Listeners, IngressListener)
	if sa := l.GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 18080 {
		t.Errorf("ingress address %v", sa)
	}
	if got := strings.Join(filterNames(hcmOf(t, l)), ","); got != "envoy.filters.http.ratelimit,envoy.filters.http.router" {
		t.Errorf("ingress filters %s", got)
	}
	rc := byName[*routev3.RouteConfiguration](t, ing.Routes, "ingress|ingress")
	api := rc.GetVirtualHosts()[0].GetRoutes()[0]
	act := api.GetRoute().GetRateLimits()[0].GetActions()[0].GetRequestHeaders()
	if api.GetMatch().GetPrefix() != "/api" || act.GetHeaderName() != "x-user" || act.GetDescriptorKey() != "user" {
		t.Errorf("ingress /api route: %v", api)
	}

	// Sidecar: inbound to the app, outbound to every service.
	sc := out.Groups[ProxyGroup("web-sidecar")]
	in := byName[*listenerv3.Listener](t, sc.Listeners, InboundListener)
	if in.GetAddress().GetSocketAddress().GetPortValue() != 15101 {
		t.Errorf("inbound listener %v", in.GetAddress())
	}
	inCLA := out.Endpoints[InboundCluster("web-sidecar")]
	if ep := inCLA.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); ep.GetPortValue() != 18101 {
		t.Errorf("inbound CLA %v", ep)
	}
	ob := byName[*routev3.RouteConfiguration](t, sc.Routes, OutboundRoute)
	var hosts []string
	for _, vh := range ob.GetVirtualHosts() {
		hosts = append(hosts, vh.GetDomains()...)
	}
	if got := strings.Join(hosts, ","); got != "api,web,rls" {
		t.Errorf("outbound hosts %s", got)
	}
	if !hcmOf(t, byName[*listenerv3.Listener](t, sc.Listeners, OutboundListener)).GetStripAnyHostPort() {
		t.Error("outbound listener does not strip the port")
	}

	// Proxyless: an api_listener per host, router last, no ratelimit filter.
	for _, h := range []string{"api", "web", "rls"} {
		l := byName[*listenerv3.Listener](t, out.Groups[GroupMesh].Listeners, h)
		var hcm hcmv3.HttpConnectionManager
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
			t.Fatalf("api listener %s: %v", h, err)
		}
		if hcm.GetRds().GetRouteConfigName() != OutboundRoute || filterNames(&hcm)[len(hcm.GetHttpFilters())-1] != "envoy.filters.http.router" {
			t.Errorf("api listener %s: %v", h, &hcm)
		}
	}

	// Health feed: the unhealthy endpoint is marked, others unknown.
	web := out.Endpoints["web"].GetEndpoints()[0]
	if web.GetLocality().GetZone() != "zone-a" || web.GetLoadBalancingWeight().GetValue() != 1 {
		t.Errorf("web locality %v", web)
	}
	if st := web.GetLbEndpoints()[0].GetHealthStatus(); st != corev3.HealthStatus_UNHEALTHY {
		t.Errorf("web health %v", st)
	}
	if st := out.Endpoints["api"].GetEndpoints()[0].GetLbEndpoints()[0].GetHealthStatus(); st != corev3.HealthStatus_UNKNOWN {
		t.Errorf("api health %v", st)
	}
}

func TestFeatures(t *testing.T) {
	m, err := model.Parse(model.Source{Name: "f.yaml", Data: []byte(`
rate_limit_service: {service: rls, domain: d}
services:
  - {name: rls, protocol: grpc, endpoints: [{address: 10.0.0.9, port: 81}]}
  - name: a
    lb: {policy: ring_hash, hash_on: {header: x-user}}
    endpoints: [{address: 10.0.0.1, port: 80, zone: z1, weight: 3}, {address: 10.0.0.2, port: 80, zone: z2}]
  - {name: b, lb: {policy: random}, endpoints: [{address: 10.0.0.3, port: 80}]}
  - {name: db, protocol: tcp, dns: {host: db.example, port: 5432}}
routes:
  - name: a
    hosts: [a, "a.mesh"]
    http:
      - name: canary
        match: {prefix: /, headers: [{name: X-Canary, exact: "1"}]}
        route: [{service: b}]
      - name: split
        match: {regex: "^/s/.*", query: [{name: debug, present: true}]}
        route: [{service: a, weight: 80}, {service: b, weight: 20}]
        fault: {abort: {grpc_status: 14, percent: 50}, delay: {fixed: 200ms}}
        retries: {attempts: 3, retry_on: "unavailable,5xx", per_try_timeout: 1s}
        mirror: {service: b, percent: 10}
        rewrite: {host: a.internal}
        headers: {request: {set: {X-A: "1"}, remove: [x-b]}, response: {add: {x-c: "2"}}}
        rate_limits: [{actions: [{generic_key: {value: v}}, {header_value_match: {value: m, headers: [{name: x, present: true}]}}, {destination_cluster: {}}, {source_cluster: {}}, {remote_address: {}}]}]
      - name: old
        match: {path: /old}
        redirect: {path: /new, code: 302}
      - name: teapot
        match: {prefix: /tea}
        direct_response: {status: 418, body: short and stout}
`)})
	if err != nil {
		t.Fatal(err)
	}
	out, err := Build(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	px := out.Groups[GroupMesh]
	rc := byName[*routev3.RouteConfiguration](t, px.Routes, OutboundRoute)
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	if h := routes[0].GetMatch().GetHeaders()[0]; h.GetName() != "x-canary" || h.GetStringMatch().GetExact() != "1" {
		t.Errorf("canary header %v", h)
	}
	split := routes[1].GetRoute()
	if wc := split.GetWeightedClusters().GetClusters(); len(wc) != 2 || wc[0].GetWeight().GetValue() != 80 || wc[1].GetName() != "b" {
		t.Errorf("split %v", wc)
	}
	if split.GetHashPolicy()[0].GetHeader().GetHeaderName() != "x-user" {
		t.Errorf("ring hash policy not carried to the route: %v", split.GetHashPolicy())
	}
	if split.GetRetryPolicy().GetNumRetries().GetValue() != 3 || split.GetRequestMirrorPolicies()[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 100000 {
		t.Errorf("retry/mirror %v", split)
	}
	if len(split.GetRateLimits()[0].GetActions()) != 5 {
		t.Errorf("rate limit actions %v", split.GetRateLimits())
	}
	var f faultv3.HTTPFault
	if err := routes[1].GetTypedPerFilterConfig()["envoy.filters.http.fault"].UnmarshalTo(&f); err != nil || f.GetAbort().GetGrpcStatus() != 14 || f.GetAbort().GetPercentage().GetNumerator() != 500000 {
		t.Errorf("fault %v %v", &f, err)
	}
	if routes[2].GetRedirect().GetResponseCode() != routev3.RedirectAction_FOUND || routes[3].GetDirectResponse().GetStatus() != 418 {
		t.Errorf("redirect/direct %v %v", routes[2], routes[3])
	}
	// proxyless: both hosts get api listeners, fault filter but no ratelimit.
	l := byName[*listenerv3.Listener](t, px.Listeners, "a.mesh")
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(filterNames(&hcm), ","); got != "envoy.filters.http.fault,envoy.filters.http.router" {
		t.Errorf("proxyless filters %s", got)
	}
	// random: kept for proxies, downgraded for gRPC which NACKs it.
	if byName[*clusterv3.Cluster](t, out.Groups[GroupHDS].Clusters, "b").GetLbPolicy() != clusterv3.Cluster_RANDOM ||
		byName[*clusterv3.Cluster](t, px.Clusters, "b").GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
		t.Error("random lb policy handling")
	}
	if byName[*clusterv3.Cluster](t, px.Clusters, "db").GetType() != clusterv3.Cluster_LOGICAL_DNS ||
		byName[*clusterv3.Cluster](t, out.Groups[GroupHDS].Clusters, "db").GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Error("dns cluster types")
	}
	a := out.Endpoints["a"]
	if len(a.GetEndpoints()) != 2 || a.GetEndpoints()[0].GetLoadBalancingWeight().GetValue() != 3 {
		t.Errorf("localities %v", a)
	}
}

func TestGolden(t *testing.T) {
	out, err := Build(loadExample(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{GroupMesh, GroupHDS, ProxyGroup("ingress"), ProxyGroup("web-sidecar")} {
		got, err := out.Dump(g)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", strings.ReplaceAll(g, "/", "_")+".golden.json")
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update)", err)
		}
		if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
			t.Errorf("group %s differs from %s; run go test ./controlplane/translate -update and review the diff", g, path)
		}
	}
}

// A tcp service has no host to route on: a sidecar reaches it through a
// local port of its own, a tcp_proxy listener to the service's cluster.
func TestSidecarTCPOutbound(t *testing.T) {
	m, err := model.Parse(model.Source{Name: "tcp.yaml", Data: []byte(`
services:
  - {name: web, endpoints: [{address: 10.0.0.1, port: 80}]}
  - {name: db, protocol: tcp, endpoints: [{address: 10.0.0.2, port: 5432}]}
  - {name: cache, protocol: tcp, dns: {host: cache.example, port: 6379}}
proxies:
  - id: web-1
    role: sidecar
    service: web
    inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080}
    outbound:
      listen: 127.0.0.1:15001
      tcp:
        - {service: db, listen: 127.0.0.1:15432}
        - {service: cache, listen: "[::1]:16379"}
`)})
	if err != nil {
		t.Fatal(err)
	}
	out, err := Build(m, nil) // runs ValidateAll on every resource
	if err != nil {
		t.Fatal(err)
	}
	g := out.Groups[ProxyGroup("web-1")]
	for _, c := range []struct {
		service, host string
		port          uint32
	}{
		{"db", "127.0.0.1", 15432}, {"cache", "::1", 16379},
	} {
		l := byName[*listenerv3.Listener](t, g.Listeners, OutboundTCPListener(c.service))
		if err := l.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		sa := l.GetAddress().GetSocketAddress()
		if sa.GetAddress() != c.host || sa.GetPortValue() != c.port {
			t.Errorf("%s listens on %v", c.service, sa)
		}
		fs := l.GetFilterChains()
		if len(fs) != 1 || len(fs[0].GetFilters()) != 1 || fs[0].GetFilters()[0].GetName() != "envoy.filters.network.tcp_proxy" {
			t.Fatalf("%s filter chains: %v", c.service, fs)
		}
		var tp tcpproxyv3.TcpProxy
		if err := fs[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&tp); err != nil || tp.GetCluster() != c.service || tp.GetStatPrefix() == "" {
			t.Errorf("%s tcp_proxy %v %v", c.service, &tp, err)
		}
		byName[*clusterv3.Cluster](t, g.Clusters, c.service) // the cluster it proxies to is served
	}
	if n := len(g.Listeners); n != 4 {
		t.Errorf("%d listeners, want inbound, outbound and two tcp", n)
	}
}
