package route

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func to(name string, m *routev3.RouteMatch) *routev3.Route {
	return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}}}
}

func prefix(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func exactHeader(name, v string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}}
}

func mustCompile(t *testing.T, rc *routev3.RouteConfiguration) *Table {
	t.Helper()
	if err := rc.ValidateAll(); err != nil {
		t.Fatalf("invalid test config: %v", err)
	}
	tb, err := Compile(rc)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestVirtualHostSelection(t *testing.T) {
	vh := func(name string, domains ...string) *routev3.VirtualHost {
		return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{to(name, prefix("/"))}}
	}
	tb := mustCompile(t, &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{
		vh("exact", "api.example.com", "api.example.com:8080"), vh("suffix", "*.example.com"), vh("longsuffix", "*.b.example.com"),
		vh("prefix", "api.*"), vh("any", "*"),
	}})
	for host, want := range map[string]string{
		"api.example.com": "exact", "API.example.com:8080": "exact", "x.example.com": "suffix", "x.b.example.com": "longsuffix",
		"api.other.org": "prefix", "other": "any", "api.example.com:9999": "prefix", "x.example.com:80": "suffix",
	} {
		if got := tb.VirtualHost(host); got == nil || got.Name != want {
			t.Errorf("host %q: got %v, want %s", host, got, want)
		}
	}
}

func TestRouteMatching(t *testing.T) {
	re := to("regex", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/items/[0-9]+"}}})
	hdr := to("header", prefix("/h"))
	hdr.Match.Headers = []*routev3.HeaderMatcher{exactHeader("x-user", "alice"),
		{Name: "x-absent", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true}}
	rng := to("range", prefix("/h"))
	rng.Match.Headers = []*routev3.HeaderMatcher{{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 10, End: 20}}}}
	q := to("query", prefix("/h"))
	q.Match.QueryParameters = []*routev3.QueryParameterMatcher{{Name: "debug", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "tr"}}}}}
	exact := to("exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/exact"}})
	ci := to("nocase", prefix("/CASE"))
	ci.Match.CaseSensitive = wrapperspb.Bool(false)
	sep := to("sep", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"}})
	tb := mustCompile(t, &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"},
		Routes: []*routev3.Route{re, hdr, rng, q, exact, ci, sep, to("fallback", prefix("/"))}}}})
	cases := []struct {
		path string
		hdr  map[string]string
		want string
	}{
		{"/items/42", nil, "regex"},
		{"/items/42x", nil, "fallback"},
		{"/h", map[string]string{"X-User": "alice"}, "header"},
		{"/h", map[string]string{"X-User": "alice", "X-Absent": "1"}, "fallback"},
		{"/h", map[string]string{"X-User": "bob"}, "fallback"},
		{"/h", map[string]string{"X-N": "15"}, "range"},
		{"/h", map[string]string{"X-N": "20"}, "fallback"},
		{"/h?debug=true", nil, "query"},
		{"/h?debug=no", nil, "fallback"},
		{"/exact", nil, "exact"},
		{"/exact/more", nil, "fallback"},
		{"/case/x", nil, "nocase"},
		{"/api", nil, "sep"},
		{"/api/v1", nil, "sep"},
		{"/apiv1", nil, "fallback"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "http://x"+c.path, nil)
		for k, v := range c.hdr {
			r.Header.Set(k, v)
		}
		_, rt := tb.Match(r)
		if rt == nil || rt.Name != c.want {
			t.Errorf("%s %v: got %v, want %s", c.path, c.hdr, rt, c.want)
		}
	}
}

func TestWeightedPickDistribution(t *testing.T) {
	r := &routev3.Route{Match: prefix("/"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
		WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
			{Name: "a", Weight: wrapperspb.UInt32(70)}, {Name: "b", Weight: wrapperspb.UInt32(20)}, {Name: "c", Weight: wrapperspb.UInt32(10)}}}}}}}
	tb := mustCompile(t, &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{r}}}})
	_, rt := tb.Match(httptest.NewRequest("GET", "/", nil))
	n := 100000
	got := map[string]int{}
	req := httptest.NewRequest("GET", "/", nil)
	for i := 0; i < n; i++ {
		got[rt.PickCluster(req).Name]++
	}
	// Binomial bounds at 5 sigma.
	for name, p := range map[string]float64{"a": .7, "b": .2, "c": .1} {
		mean := p * float64(n)
		sigma := sqrt(float64(n) * p * (1 - p))
		if d := float64(got[name]) - mean; d > 5*sigma || d < -5*sigma {
			t.Errorf("%s: %d picks, want %.0f ± %.0f", name, got[name], mean, 5*sigma)
		}
	}
}

func sqrt(x float64) float64 {
	z := x
	for i := 0; i < 50; i++ {
		z = (z + x/z) / 2
	}
	return z
}

func TestRewriteAndHeaders(t *testing.T) {
	r := to("rw", prefix("/old/"))
	r.GetRoute().PrefixRewrite = "/new/"
	r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "1"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	r.RequestHeadersToRemove = []string{"x-secret"}
	rr := to("re", prefix("/re/"))
	rr.GetRoute().RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/re/(\\w+)/(\\w+)$"}, Substitution: "/\\2/\\1"}
	tb := mustCompile(t, &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{r, rr}}}})
	_, rt := tb.Match(httptest.NewRequest("GET", "/old/x/y", nil))
	if got := rt.RewritePath("/old/x/y"); got != "/new/x/y" {
		t.Errorf("prefix rewrite: %q", got)
	}
	h := http.Header{"X-A": {"0"}, "X-Secret": {"s"}}
	rt.Headers.ApplyRequest(h)
	if h.Get("X-A") != "1" || h.Get("X-Secret") != "" {
		t.Errorf("headers: %v", h)
	}
	_, rt = tb.Match(httptest.NewRequest("GET", "/re/a/b", nil))
	if got := rt.RewritePath("/re/a/b"); got != "/b/a" {
		t.Errorf("regex rewrite: %q", got)
	}
}

func TestCompileErrorsNameTheField(t *testing.T) {
	bad := to("bad", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}})
	_, err := Compile(&routev3.RouteConfiguration{Name: "cfg", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{bad}}}})
	if err == nil || !strings.Contains(err.Error(), `route_config "cfg"`) || !strings.Contains(err.Error(), "routes[0]") || !strings.Contains(err.Error(), "safe_regex") {
		t.Fatalf("error should name config, route and field: %v", err)
	}
	dup := &routev3.RouteConfiguration{Name: "cfg", VirtualHosts: []*routev3.VirtualHost{{Name: "a", Domains: []string{"*"}}, {Name: "b", Domains: []string{"*"}}}}
	if _, err := Compile(dup); err == nil || !strings.Contains(err.Error(), "more than one virtual host") {
		t.Fatalf("duplicate domain: %v", err)
	}
	rp := to("r", prefix("/"))
	rp.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,bogus"}
	if _, err := Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{rp}}}}); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Fatalf("bad retry_on: %v", err)
	}
}

func TestRetryPolicy(t *testing.T) {
	rp, err := compileRetry(&routev3.RetryPolicy{RetryOn: "gateway-error,retriable-status-codes,unavailable", RetriableStatusCodes: []uint32{409}})
	if err != nil {
		t.Fatal(err)
	}
	for code, want := range map[int]bool{500: false, 502: true, 503: true, 504: true, 409: true, 200: false} {
		if got := rp.RetryStatus(code, ""); got != want {
			t.Errorf("status %d: %v", code, got)
		}
	}
	if !rp.RetryStatus(200, "14") || rp.RetryStatus(200, "13") {
		t.Errorf("grpc status handling")
	}
	if rp.NumRetries != 1 {
		t.Errorf("default num_retries: %d", rp.NumRetries)
	}
	for i := 1; i < 10; i++ {
		if d := rp.Backoff(i); d < 0 || d > rp.MaxInterval {
			t.Errorf("backoff %d: %s", i, d)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	var routes []*routev3.Route
	for i := 0; i < 20; i++ {
		routes = append(routes, to(fmt.Sprint("r", i), prefix(fmt.Sprintf("/svc%d/", i))))
	}
	hdr := to("hdr", prefix("/"))
	hdr.Match.Headers = []*routev3.HeaderMatcher{exactHeader("x-user", "tester")}
	routes = append(routes, hdr, to("last", prefix("/")))
	tb, err := Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: routes}}})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://api/other/path", nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, rt := tb.Match(req); rt == nil || rt.Name != "last" {
			b.Fatal("no match")
		}
	}
}
