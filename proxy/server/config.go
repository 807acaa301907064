package server

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/sidemesh/sidemesh/proxy/route"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

const tcpProxyType = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

// Listener kinds.
const (
	kindHTTP = iota
	kindTCP
)

// listenerConfig is a compiled Listener.
type listenerConfig struct {
	name string
	addr string
	kind int
	hcm  *hcmConfig
	tcp  *tcpConfig
}

// hcmConfig is a compiled HttpConnectionManager.
type hcmConfig struct {
	statPrefix  string
	rdsName     string
	inline      *route.Table
	stats       *stats.HTTP
	upgrades    map[string]bool
	useRemote   bool
	skipXFF     bool
	genReqID    bool
	idleTimeout time.Duration
	filters     []string
	chain       http.Handler // HTTP filters around the router; nil when none is built
	proto       *hcmv3.HttpConnectionManager
}

type tcpConfig struct {
	statPrefix  string
	clusters    []route.WeightedCluster
	total       uint32
	idleTimeout time.Duration
}

// HTTP filters the proxy accepts. The router is implemented here; the
// rate-limit, fault and local rate-limit filters are accepted so a mesh
// config written for Envoy loads, and are implemented with issue 7.
var knownHTTPFilters = map[string]bool{
	"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router":                  true,
	"type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit":            true,
	"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault":                true,
	"type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": true,
	"type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck":       true,
}

func compileListener(l *listenerv3.Listener, m *stats.Metrics, factories map[string]FilterFactory) (*listenerConfig, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("listener %q: address.socket_address is required", l.GetName())
	}
	if sa.GetProtocol().String() != "TCP" {
		return nil, fmt.Errorf("listener %q: only TCP listeners are supported", l.GetName())
	}
	lc := &listenerConfig{name: l.GetName(), addr: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))}
	chains := l.GetFilterChains()
	if len(chains) == 0 && l.GetDefaultFilterChain() != nil {
		chains = []*listenerv3.FilterChain{l.GetDefaultFilterChain()}
	}
	if len(chains) == 0 {
		return nil, fmt.Errorf("listener %q: no filter chains", l.GetName())
	}
	// Without TLS or original-dst there is nothing to choose chains by:
	// the first chain serves every connection.
	fc := chains[0]
	if fc.GetTransportSocket() != nil {
		return nil, fmt.Errorf("listener %q: filter_chains[0].transport_socket (TLS) is not supported", l.GetName())
	}
	for i, f := range fc.GetFilters() {
		switch f.GetTypedConfig().GetTypeUrl() {
		case xds.HCMType:
			var h hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
				return nil, fmt.Errorf("listener %q: filters[%d]: %w", l.GetName(), i, err)
			}
			hc, err := compileHCM(&h, m, factories)
			if err != nil {
				return nil, fmt.Errorf("listener %q: filters[%d] http_connection_manager: %w", l.GetName(), i, err)
			}
			lc.kind, lc.hcm = kindHTTP, hc
			return lc, nil
		case tcpProxyType:
			var t tcpv3.TcpProxy
			if err := f.GetTypedConfig().UnmarshalTo(&t); err != nil {
				return nil, fmt.Errorf("listener %q: filters[%d]: %w", l.GetName(), i, err)
			}
			tc := &tcpConfig{statPrefix: t.GetStatPrefix(), idleTimeout: time.Hour}
			if d := t.GetIdleTimeout(); d != nil {
				tc.idleTimeout = d.AsDuration()
			}
			if c := t.GetCluster(); c != "" {
				tc.clusters = []route.WeightedCluster{{Name: c, Weight: 1}}
			}
			for _, wc := range t.GetWeightedClusters().GetClusters() {
				tc.clusters = append(tc.clusters, route.WeightedCluster{Name: wc.GetName(), Weight: wc.GetWeight()})
			}
			for _, c := range tc.clusters {
				tc.total += c.Weight
			}
			if tc.total == 0 {
				return nil, fmt.Errorf("listener %q: tcp_proxy needs a cluster", l.GetName())
			}
			lc.kind, lc.tcp = kindTCP, tc
			return lc, nil
		default:
			return nil, fmt.Errorf("listener %q: filters[%d] %q: unsupported network filter %s", l.GetName(), i, f.GetName(), f.GetTypedConfig().GetTypeUrl())
		}
	}
	return nil, fmt.Errorf("listener %q: no http_connection_manager or tcp_proxy filter", l.GetName())
}

func compileHCM(h *hcmv3.HttpConnectionManager, m *stats.Metrics, factories map[string]FilterFactory) (*hcmConfig, error) {
	hc := &hcmConfig{statPrefix: h.GetStatPrefix(), stats: m.HTTP(h.GetStatPrefix()), useRemote: h.GetUseRemoteAddress().GetValue(),
		skipXFF: h.GetSkipXffAppend(), genReqID: true, proto: h, idleTimeout: time.Hour}
	if g := h.GetGenerateRequestId(); g != nil {
		hc.genReqID = g.GetValue()
	}
	if d := h.GetCommonHttpProtocolOptions().GetIdleTimeout(); d != nil {
		hc.idleTimeout = d.AsDuration()
	}
	switch rs := h.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if rs.Rds.GetConfigSource().GetAds() == nil && rs.Rds.GetConfigSource().GetSelf() == nil {
			return nil, fmt.Errorf("rds.config_source must be ads (only ADS is supported)")
		}
		hc.rdsName = rs.Rds.GetRouteConfigName()
	case *hcmv3.HttpConnectionManager_RouteConfig:
		t, err := compileTable(rs.RouteConfig, m)
		if err != nil {
			return nil, fmt.Errorf("route_config: %w", err)
		}
		hc.inline = t
	default:
		return nil, fmt.Errorf("unsupported route specifier %T (use rds or route_config)", rs)
	}
	for _, u := range h.GetUpgradeConfigs() {
		if hc.upgrades == nil {
			hc.upgrades = map[string]bool{}
		}
		en := true
		if u.GetEnabled() != nil {
			en = u.GetEnabled().GetValue()
		}
		hc.upgrades[strings.ToLower(u.GetUpgradeType())] = en
	}
	sawRouter := false
	var wraps []func(http.Handler) http.Handler
	for i, f := range h.GetHttpFilters() {
		tu := f.GetTypedConfig().GetTypeUrl()
		if fac := factories[tu]; fac != nil && !sawRouter {
			wrap, err := fac(f.GetName(), f.GetTypedConfig())
			if err != nil {
				return nil, fmt.Errorf("http_filters[%d] %q: %w", i, f.GetName(), err)
			}
			wraps = append(wraps, wrap)
			hc.filters = append(hc.filters, f.GetName())
			continue
		}
		if !knownHTTPFilters[tu] {
			if f.GetIsOptional() {
				continue
			}
			return nil, fmt.Errorf("http_filters[%d] %q: unsupported filter type %q", i, f.GetName(), tu)
		}
		if sawRouter {
			return nil, fmt.Errorf("http_filters[%d] %q: the router must be the last filter", i, f.GetName())
		}
		if strings.HasSuffix(tu, "router.v3.Router") {
			sawRouter = true
		}
		hc.filters = append(hc.filters, f.GetName())
	}
	if len(h.GetHttpFilters()) > 0 && !sawRouter {
		return nil, fmt.Errorf("http_filters: the last filter must be envoy.filters.http.router")
	}
	if len(wraps) > 0 {
		var chain http.Handler = routerHandler
		for i := len(wraps) - 1; i >= 0; i-- {
			chain = wraps[i](chain) // the first filter listed runs first
		}
		hc.chain = chain
	}
	return hc, nil
}

// compileTable compiles a route table and attaches per-route stats.
func compileTable(rc *routev3.RouteConfiguration, m *stats.Metrics) (*route.Table, error) {
	t, err := route.Compile(rc)
	if err != nil {
		return nil, err
	}
	for _, vh := range t.VirtualHosts() {
		for i, rt := range vh.Routes {
			name := rt.Name
			if name == "" {
				name = "route_" + strconv.Itoa(i)
			}
			rt.Stats = m.Route(vh.Name, name)
		}
	}
	return t, nil
}
