// Package route compiles Envoy RouteConfigurations into immutable tables and
// matches requests against them. A Table is built once per xDS update and then
// read without locks by every request.
package route

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/sidemesh/sidemesh/proxy/stats"
)

// DefaultTimeout is Envoy's default route timeout.
const DefaultTimeout = 15 * time.Second

// Table is a compiled RouteConfiguration.
type Table struct {
	Name   string
	exact  map[string]*VirtualHost
	suffix []domainVH // "*.example.com", longest first
	prefix []domainVH // "example.*", longest first
	any    *VirtualHost
	// Headers applied for every route of the table (outermost).
	Headers HeaderOps
	Proto   *routev3.RouteConfiguration
}

type domainVH struct {
	part string
	vh   *VirtualHost
}

// VirtualHost is a compiled virtual host.
type VirtualHost struct {
	Name    string
	Routes  []*Route
	Headers HeaderOps
	Retry   *RetryPolicy
	Proto   *routev3.VirtualHost
}

// Action kinds.
const (
	ActionCluster = iota
	ActionRedirect
	ActionDirect
)

// Route is one compiled route: match plus action.
type Route struct {
	Name  string
	VHost *VirtualHost

	pathKind      int // 0 prefix, 1 exact, 2 regex, 3 path_separated_prefix
	path          string
	caseSensitive bool
	re            *regexp.Regexp
	headers       []*headerMatcher
	query         []*queryMatcher
	grpcOnly      bool

	Action int
	// Cluster action.
	Clusters      []WeightedCluster
	totalWeight   uint32
	ClusterHeader string
	Timeout       time.Duration // 0 = no timeout
	Retry         *RetryPolicy
	PrefixRewrite string
	RegexRewrite  *regexp.Regexp
	RegexSubst    string
	HostRewrite   string
	AutoHost      bool
	HashPolicies  []HashPolicy
	Upgrades      map[string]bool // explicit per-route upgrade settings
	Mirrors       []Mirror
	// Redirect action.
	Redirect *Redirect
	// Direct response action.
	DirectStatus int
	DirectBody   string

	Headers HeaderOps
	Proto   *routev3.Route
	// Stats is set once by the proxy before the table is published.
	Stats *stats.Codes
}

// WeightedCluster is one target of a route.
type WeightedCluster struct {
	Name    string
	Weight  uint32
	Headers HeaderOps
}

// Mirror is a request_mirror_policy: a copy of the request goes to Cluster,
// its response is ignored.
type Mirror struct {
	Cluster  string
	Fraction float64 // 0..1
}

// HashPolicy is a compiled RouteAction.HashPolicy for ring hash.
type HashPolicy struct {
	Header   string
	SourceIP bool
	Query    string
	Cookie   string
	Terminal bool
}

// Redirect is a compiled RedirectAction.
type Redirect struct {
	Scheme, Host, Path, PrefixRewrite string
	Port                              uint32
	Code                              int
	StripQuery                        bool
	HTTPSRedirect                     bool
}

// HeaderOps adds and removes headers on requests and responses.
type HeaderOps struct {
	ReqAdd    []HeaderValue
	ReqRemove []string
	ResAdd    []HeaderValue
	ResRemove []string
}

// HeaderValue is one header to add; Append false replaces existing values.
type HeaderValue struct {
	Key, Value string
	Append     bool
	IfAbsent   bool
}

// Empty reports whether there is nothing to do.
func (h *HeaderOps) Empty() bool {
	return len(h.ReqAdd) == 0 && len(h.ReqRemove) == 0 && len(h.ResAdd) == 0 && len(h.ResRemove) == 0
}

// ApplyRequest edits request headers.
func (h *HeaderOps) ApplyRequest(hd http.Header) {
	for _, k := range h.ReqRemove {
		hd.Del(k)
	}
	applyAdds(hd, h.ReqAdd)
}

// ApplyResponse edits response headers.
func (h *HeaderOps) ApplyResponse(hd http.Header) {
	for _, k := range h.ResRemove {
		hd.Del(k)
	}
	applyAdds(hd, h.ResAdd)
}

func applyAdds(hd http.Header, adds []HeaderValue) {
	for _, a := range adds {
		switch {
		case a.IfAbsent:
			if hd.Get(a.Key) == "" {
				hd.Set(a.Key, a.Value)
			}
		case a.Append:
			hd.Add(a.Key, a.Value)
		default:
			hd.Set(a.Key, a.Value)
		}
	}
}

// Compile builds a Table from a RouteConfiguration, or says which virtual
// host / route / field is wrong.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	t := &Table{Name: rc.GetName(), exact: map[string]*VirtualHost{}, Proto: rc}
	var err error
	if t.Headers, err = compileHeaderOps(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, fmt.Errorf("route_config %q: %w", rc.GetName(), err)
	}
	for i, v := range rc.GetVirtualHosts() {
		vh, err := compileVHost(v)
		if err != nil {
			return nil, fmt.Errorf("route_config %q: virtual_hosts[%d] %q: %w", rc.GetName(), i, v.GetName(), err)
		}
		for _, d := range v.GetDomains() {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				if t.any != nil {
					return nil, fmt.Errorf("route_config %q: domain \"*\" appears in more than one virtual host", rc.GetName())
				}
				t.any = vh
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, domainVH{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefix = append(t.prefix, domainVH{d[:len(d)-1], vh})
			default:
				if _, dup := t.exact[d]; dup {
					return nil, fmt.Errorf("route_config %q: domain %q appears in more than one virtual host", rc.GetName(), d)
				}
				t.exact[d] = vh
			}
		}
	}
	sort.SliceStable(t.suffix, func(i, j int) bool { return len(t.suffix[i].part) > len(t.suffix[j].part) })
	sort.SliceStable(t.prefix, func(i, j int) bool { return len(t.prefix[i].part) > len(t.prefix[j].part) })
	return t, nil
}

func compileVHost(v *routev3.VirtualHost) (*VirtualHost, error) {
	vh := &VirtualHost{Name: v.GetName(), Proto: v}
	var err error
	if vh.Headers, err = compileHeaderOps(v.GetRequestHeadersToAdd(), v.GetRequestHeadersToRemove(), v.GetResponseHeadersToAdd(), v.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	if v.GetRetryPolicy() != nil {
		if vh.Retry, err = compileRetry(v.GetRetryPolicy()); err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
	}
	for i, r := range v.GetRoutes() {
		rt, err := compileRoute(r, vh)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, r.GetName(), err)
		}
		vh.Routes = append(vh.Routes, rt)
	}
	return vh, nil
}

func compileRoute(r *routev3.Route, vh *VirtualHost) (*Route, error) {
	rt := &Route{Name: r.GetName(), VHost: vh, Proto: r, caseSensitive: true}
	m := r.GetMatch()
	if cs := m.GetCaseSensitive(); cs != nil {
		rt.caseSensitive = cs.GetValue()
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rt.pathKind, rt.path = 0, p.Prefix
	case *routev3.RouteMatch_Path:
		rt.pathKind, rt.path = 1, p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("match.safe_regex: %w", err)
		}
		rt.pathKind, rt.re = 2, re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		rt.pathKind, rt.path = 3, p.PathSeparatedPrefix
	default:
		return nil, fmt.Errorf("match: unsupported path specifier %T", p)
	}
	if !rt.caseSensitive {
		rt.path = strings.ToLower(rt.path)
	}
	for _, h := range m.GetHeaders() {
		hm, err := compileHeaderMatcher(h)
		if err != nil {
			return nil, fmt.Errorf("match.headers: %w", err)
		}
		rt.headers = append(rt.headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		qm, err := compileQueryMatcher(q)
		if err != nil {
			return nil, fmt.Errorf("match.query_parameters: %w", err)
		}
		rt.query = append(rt.query, qm)
	}
	rt.grpcOnly = m.GetGrpc() != nil
	var err error
	if rt.Headers, err = compileHeaderOps(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		rt.Action = ActionCluster
		if err := compileRouteAction(rt, a.Route); err != nil {
			return nil, fmt.Errorf("route: %w", err)
		}
	case *routev3.Route_Redirect:
		rt.Action = ActionRedirect
		rt.Redirect = compileRedirect(a.Redirect)
	case *routev3.Route_DirectResponse:
		rt.Action = ActionDirect
		rt.DirectStatus = int(a.DirectResponse.GetStatus())
		if b := a.DirectResponse.GetBody(); b != nil {
			switch s := b.GetSpecifier().(type) {
			case *corev3.DataSource_InlineString:
				rt.DirectBody = s.InlineString
			case *corev3.DataSource_InlineBytes:
				rt.DirectBody = string(s.InlineBytes)
			default:
				return nil, fmt.Errorf("direct_response.body: only inline_string and inline_bytes are supported")
			}
		}
	default:
		return nil, fmt.Errorf("unsupported action %T", a)
	}
	return rt, nil
}

func compileRouteAction(rt *Route, a *routev3.RouteAction) error {
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		rt.Clusters = []WeightedCluster{{Name: c.Cluster, Weight: 1}}
	case *routev3.RouteAction_ClusterHeader:
		rt.ClusterHeader = http.CanonicalHeaderKey(c.ClusterHeader)
	case *routev3.RouteAction_WeightedClusters:
		for i, w := range c.WeightedClusters.GetClusters() {
			wc := WeightedCluster{Name: w.GetName(), Weight: w.GetWeight().GetValue()}
			var err error
			if wc.Headers, err = compileHeaderOps(w.GetRequestHeadersToAdd(), w.GetRequestHeadersToRemove(), w.GetResponseHeadersToAdd(), w.GetResponseHeadersToRemove()); err != nil {
				return fmt.Errorf("weighted_clusters.clusters[%d]: %w", i, err)
			}
			if wc.Name == "" {
				return fmt.Errorf("weighted_clusters.clusters[%d]: name is required", i)
			}
			rt.Clusters = append(rt.Clusters, wc)
			rt.totalWeight += wc.Weight
		}
		if rt.totalWeight == 0 {
			return fmt.Errorf("weighted_clusters: total weight is 0")
		}
	default:
		return fmt.Errorf("unsupported cluster specifier %T", c)
	}
	if len(rt.Clusters) == 1 {
		rt.totalWeight = rt.Clusters[0].Weight
	}
	rt.Timeout = DefaultTimeout
	if a.GetTimeout() != nil {
		rt.Timeout = a.GetTimeout().AsDuration()
	}
	if a.GetRetryPolicy() != nil {
		var err error
		if rt.Retry, err = compileRetry(a.GetRetryPolicy()); err != nil {
			return fmt.Errorf("retry_policy: %w", err)
		}
	} else {
		rt.Retry = rt.VHost.Retry
	}
	rt.PrefixRewrite = a.GetPrefixRewrite()
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return fmt.Errorf("regex_rewrite: %w", err)
		}
		rt.RegexRewrite, rt.RegexSubst = re, convertSubst(rr.GetSubstitution())
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		rt.HostRewrite = h.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		rt.AutoHost = h.AutoHostRewrite.GetValue()
	}
	for _, hp := range a.GetHashPolicy() {
		p := HashPolicy{Terminal: hp.GetTerminal()}
		switch s := hp.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			p.Header = http.CanonicalHeaderKey(s.Header.GetHeaderName())
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			p.SourceIP = s.ConnectionProperties.GetSourceIp()
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			p.Query = s.QueryParameter.GetName()
		case *routev3.RouteAction_HashPolicy_Cookie_:
			p.Cookie = s.Cookie.GetName()
		default:
			continue // filter_state etc. do not apply here
		}
		rt.HashPolicies = append(rt.HashPolicies, p)
	}
	for _, u := range a.GetUpgradeConfigs() {
		if rt.Upgrades == nil {
			rt.Upgrades = map[string]bool{}
		}
		en := true
		if u.GetEnabled() != nil {
			en = u.GetEnabled().GetValue()
		}
		rt.Upgrades[strings.ToLower(u.GetUpgradeType())] = en
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		f := 1.0
		if rf := m.GetRuntimeFraction(); rf != nil {
			f = fraction(rf.GetDefaultValue().GetNumerator(), rf.GetDefaultValue().GetDenominator().String())
		}
		rt.Mirrors = append(rt.Mirrors, Mirror{Cluster: m.GetCluster(), Fraction: f})
	}
	return nil
}

func fraction(num uint32, denom string) float64 {
	switch denom {
	case "TEN_THOUSAND":
		return float64(num) / 10000
	case "MILLION":
		return float64(num) / 1e6
	default:
		return float64(num) / 100
	}
}

// convertSubst turns RE2 "\1" back-references into Go's "${1}".
func convertSubst(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func compileRedirect(r *routev3.RedirectAction) *Redirect {
	rd := &Redirect{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	switch s := r.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		rd.HTTPSRedirect = s.HttpsRedirect
		if s.HttpsRedirect {
			rd.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.Scheme = s.SchemeRedirect
	}
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		rd.Path = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		rd.PrefixRewrite = p.PrefixRewrite
	}
	switch r.GetResponseCode() {
	case routev3.RedirectAction_FOUND:
		rd.Code = http.StatusFound
	case routev3.RedirectAction_SEE_OTHER:
		rd.Code = http.StatusSeeOther
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.Code = http.StatusTemporaryRedirect
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.Code = http.StatusPermanentRedirect
	default:
		rd.Code = http.StatusMovedPermanently
	}
	return rd
}

func compileHeaderOps(reqAdd []*corev3.HeaderValueOption, reqRm []string, resAdd []*corev3.HeaderValueOption, resRm []string) (HeaderOps, error) {
	var h HeaderOps
	conv := func(in []*corev3.HeaderValueOption) ([]HeaderValue, error) {
		var out []HeaderValue
		for _, o := range in {
			k := o.GetHeader().GetKey()
			if k == "" || strings.HasPrefix(k, ":") {
				return nil, fmt.Errorf("header key %q cannot be added", k)
			}
			hv := HeaderValue{Key: http.CanonicalHeaderKey(k), Value: o.GetHeader().GetValue()}
			switch o.GetAppendAction() {
			case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
				hv.Append = true
				if o.GetAppend() != nil {
					hv.Append = o.GetAppend().GetValue()
				}
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				hv.IfAbsent = true
			}
			out = append(out, hv)
		}
		return out, nil
	}
	var err error
	if h.ReqAdd, err = conv(reqAdd); err != nil {
		return h, fmt.Errorf("request_headers_to_add: %w", err)
	}
	if h.ResAdd, err = conv(resAdd); err != nil {
		return h, fmt.Errorf("response_headers_to_add: %w", err)
	}
	for _, k := range reqRm {
		h.ReqRemove = append(h.ReqRemove, http.CanonicalHeaderKey(k))
	}
	for _, k := range resRm {
		h.ResRemove = append(h.ResRemove, http.CanonicalHeaderKey(k))
	}
	return h, nil
}

// Match finds the virtual host and the first matching route for r.
func (t *Table) Match(r *http.Request) (*VirtualHost, *Route) {
	vh := t.VirtualHost(r.Host)
	if vh == nil {
		return nil, nil
	}
	var q url.Values
	for _, rt := range vh.Routes {
		if rt.query != nil && q == nil {
			q = r.URL.Query()
		}
		if rt.Matches(r, q) {
			return vh, rt
		}
	}
	return vh, nil
}

// VirtualHost selects the virtual host for a Host/:authority value the way
// Envoy does: exact, then longest suffix wildcard, then longest prefix
// wildcard, then "*". A host with a port is tried with and without it.
func (t *Table) VirtualHost(host string) *VirtualHost {
	h := strings.ToLower(host)
	if vh := t.lookup(h); vh != nil {
		return vh
	}
	if i := strings.LastIndexByte(h, ':'); i > 0 && !strings.HasSuffix(h, "]") {
		if vh := t.lookup(h[:i]); vh != nil {
			return vh
		}
	}
	return t.any
}

func (t *Table) lookup(h string) *VirtualHost {
	if vh, ok := t.exact[h]; ok {
		return vh
	}
	for _, d := range t.suffix {
		if len(h) > len(d.part) && strings.HasSuffix(h, d.part) {
			return d.vh
		}
	}
	for _, d := range t.prefix {
		if len(h) > len(d.part) && strings.HasPrefix(h, d.part) {
			return d.vh
		}
	}
	return nil
}

// Matches reports whether r (with parsed query q, may be nil when the route
// has no query matchers) matches the route.
func (rt *Route) Matches(r *http.Request, q url.Values) bool {
	p := r.URL.Path
	if r.URL.RawPath != "" {
		p = r.URL.RawPath
	}
	if !rt.caseSensitive && rt.pathKind != 2 {
		p = strings.ToLower(p)
	}
	switch rt.pathKind {
	case 0:
		if !strings.HasPrefix(p, rt.path) {
			return false
		}
	case 1:
		if p != rt.path {
			return false
		}
	case 2:
		if !rt.re.MatchString(p) {
			return false
		}
	case 3:
		if !(p == rt.path || strings.HasPrefix(p, rt.path) && len(p) > len(rt.path) && (p[len(rt.path)] == '/' || p[len(rt.path)] == '?')) {
			return false
		}
	}
	if rt.grpcOnly && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return false
	}
	for _, h := range rt.headers {
		if !h.match(r) {
			return false
		}
	}
	for _, qm := range rt.query {
		if !qm.match(q) {
			return false
		}
	}
	return true
}

// PickCluster chooses the target cluster: by weight, or from a header.
func (rt *Route) PickCluster(r *http.Request) *WeightedCluster {
	if rt.ClusterHeader != "" {
		v := r.Header.Get(rt.ClusterHeader)
		if v == "" {
			return nil
		}
		return &WeightedCluster{Name: v, Weight: 1}
	}
	if len(rt.Clusters) == 1 {
		return &rt.Clusters[0]
	}
	return rt.pickWeighted(rand.Uint32N(rt.totalWeight))
}

func (rt *Route) pickWeighted(n uint32) *WeightedCluster {
	for i := range rt.Clusters {
		if n < rt.Clusters[i].Weight {
			return &rt.Clusters[i]
		}
		n -= rt.Clusters[i].Weight
	}
	return &rt.Clusters[len(rt.Clusters)-1]
}

// RewritePath applies prefix_rewrite / regex_rewrite.
func (rt *Route) RewritePath(p string) string {
	if rt.PrefixRewrite != "" && (rt.pathKind == 0 || rt.pathKind == 3) {
		return rt.ReplacePrefix(p, rt.PrefixRewrite)
	}
	if rt.PrefixRewrite != "" && rt.pathKind == 1 {
		return rt.PrefixRewrite
	}
	if rt.RegexRewrite != nil {
		return rt.RegexRewrite.ReplaceAllString(p, rt.RegexSubst)
	}
	return p
}

// ReplacePrefix replaces the part of p the route's prefix matched.
func (rt *Route) ReplacePrefix(p, with string) string {
	if rt.pathKind != 0 && rt.pathKind != 3 {
		return with
	}
	rest := p[min(len(rt.path), len(p)):]
	if strings.HasSuffix(with, "/") && strings.HasPrefix(rest, "/") {
		rest = rest[1:]
	}
	return with + rest
}

// VirtualHosts lists the table's virtual hosts.
func (t *Table) VirtualHosts() []*VirtualHost {
	seen := map[*VirtualHost]bool{}
	var out []*VirtualHost
	add := func(vh *VirtualHost) {
		if vh != nil && !seen[vh] {
			seen[vh] = true
			out = append(out, vh)
		}
	}
	for _, vh := range t.exact {
		add(vh)
	}
	for _, d := range append(t.suffix, t.prefix...) {
		add(d.vh)
	}
	add(t.any)
	return out
}

// ClusterNames lists every cluster the table can route to (for warming and checks).
func (t *Table) ClusterNames() []string {
	seen := map[string]bool{}
	var out []string
	visit := func(vh *VirtualHost) {
		for _, rt := range vh.Routes {
			for _, c := range rt.Clusters {
				if !seen[c.Name] {
					seen[c.Name] = true
					out = append(out, c.Name)
				}
			}
		}
	}
	for _, vh := range t.exact {
		visit(vh)
	}
	for _, d := range append(t.suffix, t.prefix...) {
		visit(d.vh)
	}
	if t.any != nil {
		visit(t.any)
	}
	sort.Strings(out)
	return out
}
