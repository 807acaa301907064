package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

const healthCheckType = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"

// editHCM returns a copy of l whose first chain's HCM was changed by edit.
func editHCM(t *testing.T, l *listenerv3.Listener, edit func(h *hcmv3.HttpConnectionManager)) *listenerv3.Listener {
	t.Helper()
	l = proto.Clone(l).(*listenerv3.Listener)
	var h hcmv3.HttpConnectionManager
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	edit(&h)
	a, _ := anypb.New(&h)
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return l
}

func withFilterFirst(f *hcmv3.HttpFilter) func(h *hcmv3.HttpConnectionManager) {
	return func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = append([]*hcmv3.HttpFilter{f}, h.HttpFilters...) }
}

func anyOfType(typeURL string) *anypb.Any { return &anypb.Any{TypeUrl: typeURL} }

// An HTTP filter without an implementation is NACKed over ADS with a
// detail naming listener, filter and type; the last good listener keeps
// serving; the same filter marked is_optional is accepted and skipped.
func TestUnimplementedHTTPFilterNacked(t *testing.T) {
	c := mt.StartCP(t)
	a := mt.StartUpstream(t, "a")
	port := mt.FreePort(t)
	l := mt.Listener("l", port, "r")
	good := mt.Mesh{Listeners: []types.Resource{l}, Routes: []types.Resource{mt.RouteConfig("r", mt.RouteTo("/", "svc"))},
		Clusters: []types.Resource{mt.EDSCluster("svc")}, Endpoints: []types.Resource{mt.CLA("svc", mt.EP{U: a})}}
	c.Push(t, good)
	_, xc := runProxy(t, c, false)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "proxy serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })
	goodVersion := xc.Status().Versions["LDS"]

	hc := &hcmv3.HttpFilter{Name: "envoy.filters.http.health_check", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOfType(healthCheckType)}}
	bad := good
	bad.Listeners = []types.Resource{editHCM(t, l, withFilterFirst(hc))}
	c.Push(t, bad)
	mt.Eventually(t, "LDS NACK at the server", func() bool { return len(c.NackList()) > 0 })
	msg := c.NackList()[0]
	for _, want := range []string{`listener "l"`, `"envoy.filters.http.health_check"`, healthCheckType} {
		if !strings.Contains(msg, want) {
			t.Fatalf("NACK detail %q lacks %q", msg, want)
		}
	}
	if v := xc.Status().Versions["LDS"]; v != goodVersion {
		t.Fatalf("LDS version moved to %q after a NACK (was %q)", v, goodVersion)
	}
	for range 10 {
		if code, _, _ := mt.Get(t, base, nil); code != 200 {
			t.Fatalf("last good listener should serve after the NACK: %d", code)
		}
	}

	opt := proto.Clone(hc).(*hcmv3.HttpFilter)
	opt.IsOptional = true
	ok := good
	ok.Listeners = []types.Resource{editHCM(t, l, withFilterFirst(opt))}
	nacks := len(c.NackList())
	c.Push(t, ok)
	mt.Eventually(t, "optional filter accepted", func() bool { v := xc.Status().Versions["LDS"]; return v != "" && v != goodVersion })
	if n := len(c.NackList()); n != nacks {
		t.Fatalf("optional filter was NACKed: %v", c.NackList())
	}
	if code, _, _ := mt.Get(t, base, nil); code != 200 {
		t.Fatalf("with a skipped optional filter: %d", code)
	}
}

// Listener features we cannot honour are refused with a reason, and the
// config that was live keeps serving.
func TestUnsupportedListenerFeaturesRejected(t *testing.T) {
	up := mt.StartUpstream(t, "up")
	port := mt.FreePort(t)
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second})
	defer px.Shutdown(context.Background())
	l := mt.Listener("l", port, "r")
	res := xds.NewResources()
	res.Routes["r"] = mt.RouteConfig("r", mt.RouteTo("/", "svc"))
	res.Clusters["svc"] = mt.StaticCluster("svc", mt.EP{U: up})
	res.Listeners["l"] = l
	if err := px.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })

	router, _ := anypb.New(&routerv3.Router{})
	mod := func(f func(l *listenerv3.Listener)) *listenerv3.Listener {
		c := proto.Clone(l).(*listenerv3.Listener)
		f(c)
		return c
	}
	cases := []struct {
		name string
		l    *listenerv3.Listener
		want []string
	}{
		{"router not last", editHCM(t, l, func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = append(h.HttpFilters, &hcmv3.HttpFilter{Name: "late", IsOptional: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}})
		}), []string{`"late"`, "router must be the last"}},
		{"tls transport socket", mod(func(l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: anyOfType("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")}}
		}), []string{`listener "l"`, "filter_chains[0]", "transport_socket", "DownstreamTlsContext", "not supported"}},
		{"tls inspector", mod(func(l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOfType("type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")}}}
		}), []string{`listener "l"`, "listener_filters[0]", "tls_inspector", "not supported"}},
		{"unsupported network filter", mod(func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters = append([]*listenerv3.Filter{{Name: "envoy.filters.network.rbac",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOfType("type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC")}}}, l.FilterChains[0].Filters...)
		}), []string{`listener "l"`, `filters[0] "envoy.filters.network.rbac"`, "unsupported network filter", "rbac.v3.RBAC"}},
		{"server names", mod(func(l *listenerv3.Listener) {
			l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: []string{"example.com"}}
		}), []string{`listener "l"`, "filter_chain_match", "server_names", "TLS"}},
		{"http and tcp chains mixed", mod(func(l *listenerv3.Listener) {
			tp, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "svc"}})
			l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{FilterChainMatch: &listenerv3.FilterChainMatch{SourcePorts: []uint32{1}},
				Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}})
		}), []string{`listener "l"`, "filter_chains[1]", "mixing"}},
		{"duplicate chains", mod(func(l *listenerv3.Listener) {
			l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
		}), []string{`listener "l"`, "same filter_chain_match"}},
	}
	for _, tc := range cases {
		bad := *res
		bad.Listeners = map[string]*listenerv3.Listener{"l": tc.l}
		err := px.Apply(context.Background(), &bad)
		if err == nil {
			t.Fatalf("%s: accepted", tc.name)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
		if code, _, _ := mt.Get(t, base, nil); code != 200 {
			t.Fatalf("%s: last good config not serving: %d", tc.name, code)
		}
	}
}

// chainListener has one HTTP filter chain per (match, body): each answers
// with a direct response naming itself.
func chainListener(port uint32, def string, chains ...any) *listenerv3.Listener {
	hcmChain := func(body string) *listenerv3.FilterChain {
		router, _ := anypb.New(&routerv3.Router{})
		h := &hcmv3.HttpConnectionManager{StatPrefix: body, HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
			RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: body, VirtualHosts: []*routev3.VirtualHost{{
				Name: body, Domains: []string{"*"}, Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
						Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}}}}}}}}}},
		}
		a, _ := anypb.New(h)
		return &listenerv3.FilterChain{Name: body, Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}}
	}
	l := &listenerv3.Listener{Name: "chains", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}
	for i := 0; i < len(chains); i += 2 {
		fc := hcmChain(chains[i+1].(string))
		fc.FilterChainMatch = chains[i].(*listenerv3.FilterChainMatch)
		l.FilterChains = append(l.FilterChains, fc)
	}
	if def != "" {
		l.DefaultFilterChain = hcmChain(def)
	}
	return l
}

func cidr(a string, n uint32) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: a, PrefixLen: wrapperspb.UInt32(n)}
}

// getFrom sends one request from src to dst and returns the body, or ""
// when the proxy closed the connection.
func getFrom(t *testing.T, src, dst string, port uint32) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	res, err := cl.Get(fmt.Sprintf("http://%s:%d/", dst, port))
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// Filter chains are selected per connection in Envoy's order (destination
// IP before source IP, most specific prefix wins, no backtracking), with the
// default chain when none survives and the connection closed without one.
func TestFilterChainMatch(t *testing.T) {
	// Linux routes all of 127/8 to loopback, which gives distinct source
	// and destination addresses without extra interfaces.
	port := mt.FreePort(t)
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second})
	defer px.Shutdown(context.Background())
	apply := func(l *listenerv3.Listener) {
		t.Helper()
		res := xds.NewResources()
		res.Listeners[l.Name] = l
		if err := px.Apply(context.Background(), res); err != nil {
			t.Fatal(err)
		}
	}
	apply(chainListener(port, "default",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.0", 24)}}, "dst-24",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.2", 32)}}, "dst-2",
		&listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{cidr("127.0.1.3", 32)}, TransportProtocol: "raw_buffer"}, "src-1.3",
		&listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port + 1), PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.0", 24)}}, "other-port",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.2.0", 24)},
			SourceType: listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK}, "local",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.3.0", 24)}, SourceType: listenerv3.FilterChainMatch_EXTERNAL}, "external",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.4.0", 24)}, ApplicationProtocols: []string{"h2"}}, "alpn",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.5.0", 24)}, TransportProtocol: "tls"}, "tls",
	))
	cases := []struct{ src, dst, want string }{
		{"127.0.0.1", "127.0.0.1", "dst-24"},  // /24 contains it
		{"127.0.0.1", "127.0.0.2", "dst-2"},   // /32 is more specific than /24
		{"127.0.1.3", "127.0.1.1", "src-1.3"}, // no destination chain: the source range decides
		{"127.0.1.3", "127.0.0.2", "dst-2"},   // destination is checked before source
		{"127.0.1.4", "127.0.1.1", "default"}, // no chain survives: the default chain
		{"127.0.0.1", "127.0.2.9", "local"},   // prefix + loopback source
		{"127.0.0.1", "127.0.3.9", "default"}, // EXTERNAL never matches a loopback source
		{"127.0.0.1", "127.0.4.9", "default"}, // nothing detects ALPN here
		{"127.0.0.1", "127.0.5.9", "default"}, // transport is raw_buffer, not tls
	}
	check := func() {
		t.Helper()
		for _, c := range cases {
			var got string
			// The listener may still be coming up on the first request.
			mt.Eventually(t, "chain answer", func() bool { got = getFrom(t, c.src, c.dst, port); return got != "" })
			if got != c.want {
				t.Errorf("%s → %s: chain %q, want %q", c.src, c.dst, got, c.want)
			}
		}
	}
	check()

	// Without a default chain, a connection no chain matches is closed.
	// A chain naming the destination port beats every chain without one
	// even when its later criteria then fail: Envoy does not backtrack.
	apply(chainListener(port, "",
		&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.2", 32)}}, "only-2",
		&listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.3", 32)}}, "port-3"))
	mt.Eventually(t, "new chains live", func() bool { return getFrom(t, "127.0.0.1", "127.0.0.3", port) == "port-3" })
	for _, dst := range []string{"127.0.0.1", "127.0.0.2"} {
		if got := getFrom(t, "127.0.0.1", dst, port); got != "" {
			t.Fatalf("→ %s: an unmatched connection was served by %q", dst, got)
		}
	}
}

// tcp_proxy chains are selected per connection too: by destination IP here,
// each chain to its own upstream, and a connection no chain matches closed.
func TestTCPFilterChainMatch(t *testing.T) {
	a, b := mt.StartUpstream(t, "a"), mt.StartUpstream(t, "b")
	port := mt.FreePort(t)
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second})
	defer px.Shutdown(context.Background())
	tcpChain := func(cluster string, fm *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
		tp, _ := anypb.New(&tcpv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})
		return &listenerv3.FilterChain{FilterChainMatch: fm, Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}
	}
	res := xds.NewResources()
	res.Clusters["a"] = mt.StaticCluster("a", mt.EP{U: a})
	res.Clusters["b"] = mt.StaticCluster("b", mt.EP{U: b})
	res.Listeners["tcp"] = &listenerv3.Listener{Name: "tcp", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{
			tcpChain("a", &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.2", 32)}}),
			tcpChain("b", &listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{cidr("127.0.0.3", 32)}}),
		}}
	if err := px.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	upstreamVia := func(dst string) string {
		cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		r, err := cl.Get(fmt.Sprintf("http://%s:%d/", dst, port))
		if err != nil {
			return ""
		}
		r.Body.Close()
		return r.Header.Get("X-Upstream")
	}
	mt.Eventually(t, "tcp chain a", func() bool { return upstreamVia("127.0.0.2") == "a" })
	if got := upstreamVia("127.0.0.3"); got != "b" {
		t.Fatalf("→ 127.0.0.3 reached %q, want b", got)
	}
	if got := upstreamVia("127.0.0.1"); got != "" {
		t.Fatalf("an unmatched TCP connection reached %q", got)
	}
}

// typed_per_filter_config follows the same rule as filters: a type no
// filter implements rejects the route config (the last good one serves),
// unless wrapped in a FilterConfig marked is_optional.
func TestUnimplementedPerFilterConfigRejected(t *testing.T) {
	up := mt.StartUpstream(t, "up")
	port := mt.FreePort(t)
	const corsType = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
	const rlPerRoute = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
	px := server.New(server.Options{Metrics: stats.New(nil), DrainTimeout: time.Second, PerRouteTypes: []string{rlPerRoute},
		Filters: map[string]server.FilterFactory{faultType: func(string, *anypb.Any) (func(http.Handler) http.Handler, error) {
			return func(h http.Handler) http.Handler { return h }, nil
		}}})
	defer px.Shutdown(context.Background())
	res := xds.NewResources()
	res.Listeners["l"] = mt.Listener("l", port, "r")
	res.Routes["r"] = mt.RouteConfig("r", mt.RouteTo("/", "svc"))
	res.Clusters["svc"] = mt.StaticCluster("svc", mt.EP{U: up})
	if err := px.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	mt.Eventually(t, "serving", func() bool { code, _, _ := mt.Get(t, base, nil); return code == 200 })

	wrap := func(inner *anypb.Any, optional bool) *anypb.Any {
		a, _ := anypb.New(&routev3.FilterConfig{Config: inner, IsOptional: optional})
		return a
	}
	for _, c := range []struct {
		name string
		pfc  map[string]*anypb.Any
		want string // "" = accepted
	}{
		{"unknown type", map[string]*anypb.Any{"envoy.filters.http.cors": anyOfType(corsType)},
			`route_config "r": virtual_hosts[0] "all": routes[0] "/": typed_per_filter_config["envoy.filters.http.cors"]: no filter implementation registered for type ` + corsType},
		{"wrapped, not optional", map[string]*anypb.Any{"envoy.filters.http.cors": wrap(anyOfType(corsType), false)}, "typed_per_filter_config"},
		{"wrapped, optional", map[string]*anypb.Any{"envoy.filters.http.cors": wrap(anyOfType(corsType), true)}, ""},
		{"a registered filter's type", map[string]*anypb.Any{"envoy.filters.http.fault": anyOfType(faultType)}, ""},
		{"a declared per-route type", map[string]*anypb.Any{"envoy.filters.http.ratelimit": anyOfType(rlPerRoute)}, ""},
	} {
		rc := mt.RouteConfig("r", mt.RouteTo("/", "svc"))
		rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig = c.pfc
		next := *res
		next.Routes = map[string]*routev3.RouteConfiguration{"r": rc}
		err := px.Apply(context.Background(), &next)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: rejected: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		if code, _, _ := mt.Get(t, base, nil); code != 200 {
			t.Fatalf("%s: not serving: %d", c.name, code)
		}
	}
}
