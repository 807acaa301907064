package translate

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	ratelimitconfv3 "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

type anyMsg = anypb.Any

// mustAny wraps a message we built ourselves; marshalling a well-formed
// generated message cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("translate: marshal %T: %v", m, err))
	}
	return a
}

func (t *translator) routeConfig(name string, vhs []model.VirtualHost) (*routev3.RouteConfiguration, error) {
	return t.routeConfigWith(name, vhs, nil)
}

// routeConfigWith builds a RouteConfiguration; target, when set, sends every
// route without destinations to the cluster it returns (the inbound side).
func (t *translator) routeConfigWith(name string, vhs []model.VirtualHost, target func(string) string) (*routev3.RouteConfiguration, error) {
	rc := &routev3.RouteConfiguration{Name: name}
	for _, vh := range vhs {
		v := &routev3.VirtualHost{Name: vh.Name, Domains: vh.Hosts}
		for i, r := range vh.HTTP {
			rt, err := t.route(r, target)
			if err != nil {
				return nil, fmt.Errorf("route config %s, virtual host %s, route %d: %w", name, vh.Name, i, err)
			}
			v.Routes = append(v.Routes, rt)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, v)
	}
	return rc, nil
}

func (t *translator) route(r model.Route, target func(string) string) (*routev3.Route, error) {
	rt := &routev3.Route{Name: r.Name, Match: routeMatch(r.Match)}
	switch {
	case r.Redirect != nil:
		rt.Action = &routev3.Route_Redirect{Redirect: redirect(r.Redirect)}
	case r.DirectResponse != nil:
		rt.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: r.DirectResponse.Status,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: r.DirectResponse.Body}},
		}}
	default:
		a, err := t.routeAction(r, target)
		if err != nil {
			return nil, err
		}
		rt.Action = &routev3.Route_Route{Route: a}
	}
	if f := r.Fault; f != nil {
		rt.TypedPerFilterConfig = map[string]*anypb.Any{wellknown.Fault: mustAny(fault(f))}
	}
	if h := r.Headers; h != nil {
		rt.RequestHeadersToAdd, rt.RequestHeadersToRemove = headerOps(h.Request)
		rt.ResponseHeadersToAdd, rt.ResponseHeadersToRemove = headerOps(h.Response)
	}
	return rt, nil
}

func (t *translator) routeAction(r model.Route, target func(string) string) (*routev3.RouteAction, error) {
	a := &routev3.RouteAction{}
	switch {
	case len(r.Route) == 0 && target != nil:
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: target("")}
	case len(r.Route) == 1:
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: r.Route[0].Service}
	case len(r.Route) > 1:
		wc := &routev3.WeightedCluster{}
		for _, d := range r.Route {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: d.Service, Weight: u32(d.Weight)})
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	default:
		return nil, fmt.Errorf("route has no destination")
	}
	if r.Timeout > 0 {
		a.Timeout = durationpb.New(r.Timeout)
		// gRPC-Go ignores timeout and honours max_stream_duration instead.
		a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(r.Timeout)}
	}
	if rt := r.Retries; rt != nil {
		a.RetryPolicy = &routev3.RetryPolicy{
			RetryOn:       strings.ReplaceAll(rt.RetryOn, " ", ""),
			NumRetries:    u32(rt.Attempts),
			PerTryTimeout: optDuration(rt.PerTryTimeout),
		}
	}
	if rw := r.Rewrite; rw != nil {
		a.PrefixRewrite = rw.Prefix
		if rw.Host != "" {
			a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.Host}
		}
	}
	if m := r.Mirror; m != nil {
		a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{
			Cluster:         m.Service,
			RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: percent(m.Percent)},
		}}
	}
	for _, rl := range r.RateLimits {
		out := &routev3.RateLimit{}
		for _, act := range rl.Actions {
			out.Actions = append(out.Actions, rateLimitAction(act))
		}
		a.RateLimits = append(a.RateLimits, out)
	}
	if h := t.hashOn(r); h != nil {
		a.HashPolicy = []*routev3.RouteAction_HashPolicy{hashPolicy(h)}
	}
	return a, nil
}

// hashOn: the route's own, else the (first) destination service's ring hash key.
func (t *translator) hashOn(r model.Route) *model.HashOn {
	if r.HashOn != nil {
		return r.HashOn
	}
	for _, d := range r.Route {
		if s := t.services[d.Service]; s != nil && s.LB.Policy == model.LBRingHash {
			return s.LB.HashOn
		}
	}
	return nil
}

func hashPolicy(h *model.HashOn) *routev3.RouteAction_HashPolicy {
	switch {
	case h.Header != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: h.Header}}}
	case h.Cookie != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
			Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: h.Cookie}}}
	default:
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	}
}

func routeMatch(m model.Match) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{}
	switch {
	case m.Path != "":
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	case m.Regex != "":
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Regex}}
	default:
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.Prefix}
	}
	if m.CaseInsensitive {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	for _, h := range m.Headers {
		rm.Headers = append(rm.Headers, headerMatcher(h))
	}
	for _, q := range m.Query {
		qm := &routev3.QueryParameterMatcher{Name: q.Name}
		switch {
		case q.Exact != nil:
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: *q.Exact}}}
		case q.Regex != nil:
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: *q.Regex}}}}
		default:
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: *q.Present}
		}
		rm.QueryParameters = append(rm.QueryParameters, qm)
	}
	return rm
}

func headerMatcher(h model.HeaderMatch) *routev3.HeaderMatcher {
	hm := &routev3.HeaderMatcher{Name: strings.ToLower(h.Name), InvertMatch: h.Invert}
	switch {
	case h.Exact != nil:
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: *h.Exact}}}
	case h.Prefix != nil:
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: *h.Prefix}}}
	case h.Regex != nil:
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: *h.Regex}}}}
	default:
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: *h.Present}
	}
	return hm
}

func redirect(r *model.Redirect) *routev3.RedirectAction {
	ra := &routev3.RedirectAction{HostRedirect: r.Host}
	if r.Path != "" {
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: r.Path}
	}
	if r.HTTPS {
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}
	}
	switch r.Code {
	case 302:
		ra.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	default:
		ra.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
	}
	return ra
}

// percent converts 0-100 (with fractions) to a per-million fraction.
func percent(p float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(p*10000 + 0.5), Denominator: typev3.FractionalPercent_MILLION}
}

func fault(f *model.Fault) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if a := f.Abort; a != nil {
		out.Abort = &faultv3.FaultAbort{Percentage: percent(a.Percent)}
		if a.GRPCStatus != nil {
			out.Abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: *a.GRPCStatus}
		} else {
			out.Abort.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: a.HTTPStatus}
		}
	}
	if d := f.Delay; d != nil {
		out.Delay = &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Fixed)},
			Percentage:         percent(d.Percent),
		}
	}
	return out
}

func headerOps(o *model.HeaderOps) ([]*corev3.HeaderValueOption, []string) {
	if o == nil {
		return nil, nil
	}
	var add []*corev3.HeaderValueOption
	for _, k := range model.SortedNames(o.Set) {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(k), Value: o.Set[k]},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	for _, k := range model.SortedNames(o.Add) {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(k), Value: o.Add[k]},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
		})
	}
	var remove []string
	for _, k := range o.Remove {
		remove = append(remove, strings.ToLower(k))
	}
	return add, remove
}

func rateLimitAction(a model.RateLimitAction) *routev3.RateLimit_Action {
	switch {
	case a.RequestHeaders != nil:
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RequestHeaders_{RequestHeaders: &routev3.RateLimit_Action_RequestHeaders{
			HeaderName: strings.ToLower(a.RequestHeaders.Header), DescriptorKey: a.RequestHeaders.Key, SkipIfAbsent: a.RequestHeaders.SkipIfAbsent,
		}}}
	case a.RemoteAddress != nil:
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{}}}
	case a.GenericKey != nil:
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{GenericKey: &routev3.RateLimit_Action_GenericKey{
			DescriptorKey: a.GenericKey.Key, DescriptorValue: a.GenericKey.Value,
		}}}
	case a.HeaderValueMatch != nil:
		hv := a.HeaderValueMatch
		m := &routev3.RateLimit_Action_HeaderValueMatch{DescriptorKey: hv.Key, DescriptorValue: hv.Value}
		if hv.ExpectMatch != nil {
			m.ExpectMatch = wrapperspb.Bool(*hv.ExpectMatch)
		}
		for _, h := range hv.Headers {
			m.Headers = append(m.Headers, headerMatcher(h))
		}
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_HeaderValueMatch_{HeaderValueMatch: m}}
	case a.DestinationCluster != nil:
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_DestinationCluster_{DestinationCluster: &routev3.RateLimit_Action_DestinationCluster{}}}
	default:
		return &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_SourceCluster_{SourceCluster: &routev3.RateLimit_Action_SourceCluster{}}}
	}
}

// listener is a proxy listener on host:port with one HCM filter chain.
func (t *translator) listener(name, listen, rds string, vhs []model.VirtualHost, stripPort bool) *listenerv3.Listener {
	host, port := splitHostPort(listen)
	hcm := t.hcm(name, rds, vhs, false, stripPort)
	return &listenerv3.Listener{
		Name:         name,
		Address:      socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{hcmChain(hcm)},
	}
}

// tcpListener proxies every connection on listen to cluster.
func tcpListener(name, listen, cluster string) *listenerv3.Listener {
	host, port := splitHostPort(listen)
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:       strings.NewReplacer("|", "_", ":", "_").Replace(name),
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       wellknown.TCPProxy,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)},
		}}}},
	}
}

// apiListener is what a proxyless gRPC client dialing xds:///host asks for.
func (t *translator) apiListener(host, rds string, vhs []model.VirtualHost) *listenerv3.Listener {
	hcm := t.hcm(host, rds, vhs, true, false)
	return &listenerv3.Listener{
		Name:        host,
		ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
		// gRPC ignores filter chains; the mirror lets go-control-plane's
		// consistency check see the RDS reference.
		FilterChains: []*listenerv3.FilterChain{hcmChain(hcm)},
	}
}

func hcmChain(hcm *anypb.Any) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
	}}}
}

func (t *translator) hcm(statPrefix, rds string, vhs []model.VirtualHost, proxyless, stripPort bool) *anypb.Any {
	var needFault, needRL bool
	for _, vh := range vhs {
		for _, r := range vh.HTTP {
			needFault = needFault || r.Fault != nil
			needRL = needRL || len(r.RateLimits) > 0
		}
	}
	m := &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: strings.NewReplacer("|", "_", ":", "_").Replace(statPrefix),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: ADSConfigSource(), RouteConfigName: rds,
		}},
	}
	if stripPort {
		m.StripPortMode = &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true}
	}
	if needFault {
		// Empty here; each route carries its own fault in typed_per_filter_config.
		m.HttpFilters = append(m.HttpFilters, &hcmv3.HttpFilter{
			Name: wellknown.Fault, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})},
		})
	}
	// gRPC-Go has no rate limit filter and would NACK the listener.
	if needRL && !proxyless && t.m.RateLimitService != nil {
		rls := t.m.RateLimitService
		m.HttpFilters = append(m.HttpFilters, &hcmv3.HttpFilter{
			Name: wellknown.HTTPRateLimit, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&ratelimitv3.RateLimit{
				Domain:          rls.Domain,
				Timeout:         durationpb.New(rls.Timeout),
				FailureModeDeny: rls.FailureModeDeny,
				RateLimitService: &ratelimitconfv3.RateLimitServiceConfig{
					GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: rls.Service},
					}},
					TransportApiVersion: corev3.ApiVersion_V3,
				},
			})},
		})
	}
	m.HttpFilters = append(m.HttpFilters, &hcmv3.HttpFilter{
		Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
	})
	return mustAny(m)
}
