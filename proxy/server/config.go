package server

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sidemesh/sidemesh/proxy/route"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

const tcpProxyType = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

// Listener kinds. Every filter chain of a listener has the same kind: one
// accept loop serves either HTTP (net/http) or raw TCP splicing.
const (
	kindHTTP = iota
	kindTCP
)

// listenerConfig is a compiled Listener.
type listenerConfig struct {
	name string
	addr string
	kind int
	// hcm/tcp are set when one filter chain serves every connection (no
	// filter_chain_match criteria, no default chain): the request path then
	// does no matching at all.
	hcm *hcmConfig
	tcp *tcpConfig
	// chains and def are the filter chains to select from per connection,
	// following Envoy's filter_chain_match order.
	chains []*chainConfig
	def    *chainConfig
}

// chainConfig is one compiled filter chain.
type chainConfig struct {
	name  string
	match chainMatch
	hcm   *hcmConfig
	tcp   *tcpConfig
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

const routerType = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

func compileListener(l *listenerv3.Listener, m *stats.Metrics, fr filterReg) (*listenerConfig, error) {
	name := l.GetName()
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("listener %q: address.socket_address is required", name)
	}
	if sa.GetProtocol().String() != "TCP" {
		return nil, fmt.Errorf("listener %q: only TCP listeners are supported", name)
	}
	// Features we cannot honour are refused rather than silently served
	// as something else (Envoy would apply them).
	if lfs := l.GetListenerFilters(); len(lfs) > 0 {
		return nil, fmt.Errorf("listener %q: listener_filters[0] %q (%s): listener filters are not supported (no TLS/HTTP inspection, original_dst or proxy_protocol)",
			name, lfs[0].GetName(), lfs[0].GetTypedConfig().GetTypeUrl())
	}
	if l.GetUseOriginalDst().GetValue() {
		return nil, fmt.Errorf("listener %q: use_original_dst is not supported", name)
	}
	if len(l.GetAdditionalAddresses()) > 0 {
		return nil, fmt.Errorf("listener %q: additional_addresses is not supported", name)
	}
	if l.GetApiListener() != nil {
		return nil, fmt.Errorf("listener %q: api_listener is not supported", name)
	}
	lc := &listenerConfig{name: name, addr: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))}
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
		return nil, fmt.Errorf("listener %q: no filter chains", name)
	}
	kind := -1
	compile := func(field string, fc *listenerv3.FilterChain) (*chainConfig, error) {
		cc, err := compileChain(fc, m, fr)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %s: %w", name, field, err)
		}
		k := kindHTTP
		if cc.tcp != nil {
			k = kindTCP
		}
		if kind >= 0 && k != kind {
			return nil, fmt.Errorf("listener %q: %s: mixing http_connection_manager and tcp_proxy filter chains in one listener is not supported", name, field)
		}
		kind = k
		return cc, nil
	}
	for i, fc := range l.GetFilterChains() {
		field := fmt.Sprintf("filter_chains[%d]", i)
		if fc.GetName() != "" {
			field += fmt.Sprintf(" %q", fc.GetName())
		}
		cc, err := compile(field, fc)
		if err != nil {
			return nil, err
		}
		cm, err := compileMatch(fc.GetFilterChainMatch())
		if err != nil {
			return nil, fmt.Errorf("listener %q: %s.filter_chain_match: %w", name, field, err)
		}
		cc.match = cm
		for j, prev := range lc.chains {
			if prev.match.overlaps(&cm) {
				return nil, fmt.Errorf("listener %q: filter_chains[%d] and filter_chains[%d] have the same filter_chain_match rules", name, j, i)
			}
		}
		lc.chains = append(lc.chains, cc)
	}
	if d := l.GetDefaultFilterChain(); d != nil {
		cc, err := compile("default_filter_chain", d)
		if err != nil {
			return nil, err
		}
		lc.def = cc
	}
	lc.kind = kind
	switch {
	case lc.def == nil && len(lc.chains) == 1 && lc.chains[0].match.empty():
		lc.hcm, lc.tcp = lc.chains[0].hcm, lc.chains[0].tcp
	case lc.def != nil && len(lc.chains) == 0:
		lc.hcm, lc.tcp = lc.def.hcm, lc.def.tcp
	}
	return lc, nil
}

// compileChain compiles a filter chain's network filters: zero or more
// (none supported today) followed by one terminal filter, as Envoy requires.
func compileChain(fc *listenerv3.FilterChain, m *stats.Metrics, fr filterReg) (*chainConfig, error) {
	if ts := fc.GetTransportSocket(); ts != nil {
		return nil, fmt.Errorf("transport_socket %q (%s): TLS and other transport sockets are not supported", ts.GetName(), ts.GetTypedConfig().GetTypeUrl())
	}
	if fc.GetUseProxyProto().GetValue() {
		return nil, fmt.Errorf("use_proxy_proto is not supported")
	}
	cc := &chainConfig{name: fc.GetName()}
	fs := fc.GetFilters()
	for i, f := range fs {
		tc := f.GetTypedConfig()
		if tc == nil {
			return nil, fmt.Errorf("filters[%d] %q: typed_config is required (config_discovery is not supported)", i, f.GetName())
		}
		if cc.hcm != nil || cc.tcp != nil {
			return nil, fmt.Errorf("filters[%d] %q: a filter after the terminal filter %q (the terminal filter must be the last)", i, f.GetName(), fs[i-1].GetName())
		}
		switch tc.GetTypeUrl() {
		case xds.HCMType:
			var h hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&h); err != nil {
				return nil, fmt.Errorf("filters[%d] %q: %w", i, f.GetName(), err)
			}
			hc, err := compileHCM(&h, m, fr)
			if err != nil {
				return nil, fmt.Errorf("filters[%d] %q http_connection_manager: %w", i, f.GetName(), err)
			}
			cc.hcm = hc
		case tcpProxyType:
			var t tcpv3.TcpProxy
			if err := tc.UnmarshalTo(&t); err != nil {
				return nil, fmt.Errorf("filters[%d] %q: %w", i, f.GetName(), err)
			}
			tcfg := &tcpConfig{statPrefix: t.GetStatPrefix(), idleTimeout: time.Hour}
			if d := t.GetIdleTimeout(); d != nil {
				tcfg.idleTimeout = d.AsDuration()
			}
			if c := t.GetCluster(); c != "" {
				tcfg.clusters = []route.WeightedCluster{{Name: c, Weight: 1}}
			}
			for _, wc := range t.GetWeightedClusters().GetClusters() {
				tcfg.clusters = append(tcfg.clusters, route.WeightedCluster{Name: wc.GetName(), Weight: wc.GetWeight()})
			}
			for _, c := range tcfg.clusters {
				tcfg.total += c.Weight
			}
			if tcfg.total == 0 {
				return nil, fmt.Errorf("filters[%d] %q: tcp_proxy needs a cluster", i, f.GetName())
			}
			cc.tcp = tcfg
		default:
			return nil, fmt.Errorf("filters[%d] %q: unsupported network filter type %s", i, f.GetName(), tc.GetTypeUrl())
		}
	}
	if cc.hcm == nil && cc.tcp == nil {
		return nil, fmt.Errorf("no http_connection_manager or tcp_proxy filter")
	}
	return cc, nil
}

func compileHCM(h *hcmv3.HttpConnectionManager, m *stats.Metrics, fr filterReg) (*hcmConfig, error) {
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
		t, err := compileTable(rs.RouteConfig, m, fr)
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
	// Envoy's rule: every filter needs a registered implementation for its
	// typed_config type, unless it is marked is_optional (then it is
	// skipped); the router is terminal and must be last.
	sawRouter := false
	var wraps []func(http.Handler) http.Handler
	for i, f := range h.GetHttpFilters() {
		tc := f.GetTypedConfig()
		if tc == nil {
			if f.GetIsOptional() {
				continue
			}
			return nil, fmt.Errorf("http_filters[%d] %q: typed_config is required (config_discovery is not supported)", i, f.GetName())
		}
		tu := tc.GetTypeUrl()
		if sawRouter {
			return nil, fmt.Errorf("http_filters[%d] %q (%s): the router must be the last filter", i, f.GetName(), tu)
		}
		if tu == routerType {
			sawRouter = true
			hc.filters = append(hc.filters, f.GetName())
			continue
		}
		fac := fr.factories[tu]
		if fac == nil {
			if f.GetIsOptional() {
				continue
			}
			return nil, fmt.Errorf("http_filters[%d] %q: no filter implementation registered for type %s (mark it is_optional to skip it)", i, f.GetName(), tu)
		}
		if f.GetDisabled() {
			// Envoy enables a disabled filter only through per-route
			// config, which we do not implement; off is its default.
			continue
		}
		wrap, err := fac(f.GetName(), tc)
		if err != nil {
			return nil, fmt.Errorf("http_filters[%d] %q: %w", i, f.GetName(), err)
		}
		wraps = append(wraps, wrap)
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

// filterReg is what the proxy implements of HTTP filters: factories by
// filter type, and the extra per-route config types the filters read.
type filterReg struct {
	factories map[string]FilterFactory
	perRoute  map[string]bool
}

const filterConfigType = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

// checkPerFilter applies Envoy's rule to typed_per_filter_config: a config
// whose type no filter implements rejects the route config, unless it is
// wrapped in a FilterConfig marked is_optional.
func (fr filterReg) checkPerFilter(where string, pfc map[string]*anypb.Any) error {
	for _, name := range slices.Sorted(maps.Keys(pfc)) {
		a := pfc[name]
		tu := a.GetTypeUrl()
		optional := false
		if tu == filterConfigType {
			var fc routev3.FilterConfig
			if err := a.UnmarshalTo(&fc); err != nil {
				return fmt.Errorf("%styped_per_filter_config[%q]: %w", where, name, err)
			}
			optional, tu = fc.GetIsOptional(), fc.GetConfig().GetTypeUrl()
		}
		if fr.factories[tu] != nil || fr.perRoute[tu] || optional {
			continue
		}
		return fmt.Errorf("%styped_per_filter_config[%q]: no filter implementation registered for type %s (wrap it in a FilterConfig with is_optional to skip it)", where, name, tu)
	}
	return nil
}

// checkRouteFilterConfigs checks every typed_per_filter_config of rc.
func (fr filterReg) checkRouteFilterConfigs(rc *routev3.RouteConfiguration) error {
	for i, vh := range rc.GetVirtualHosts() {
		at := fmt.Sprintf("route_config %q: virtual_hosts[%d] %q: ", rc.GetName(), i, vh.GetName())
		if err := fr.checkPerFilter(at, vh.GetTypedPerFilterConfig()); err != nil {
			return err
		}
		for j, rt := range vh.GetRoutes() {
			rat := fmt.Sprintf("%sroutes[%d] %q: ", at, j, rt.GetName())
			if err := fr.checkPerFilter(rat, rt.GetTypedPerFilterConfig()); err != nil {
				return err
			}
			for k, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
				if err := fr.checkPerFilter(fmt.Sprintf("%sweighted_clusters[%d] %q: ", rat, k, wc.GetName()), wc.GetTypedPerFilterConfig()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// compileTable compiles a route table and attaches per-route stats.
func compileTable(rc *routev3.RouteConfiguration, m *stats.Metrics, fr filterReg) (*route.Table, error) {
	if err := fr.checkRouteFilterConfigs(rc); err != nil {
		return nil, err
	}
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
