package model

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type fieldError struct {
	path   string
	reason string
}

// validator checks a merged model and fills in defaults, so that translation
// sees explicit values only.
type validator struct {
	errs     []fieldError
	services map[string]*Service
	hasRLS   bool
}

func (v *validator) errf(path, format string, args ...any) {
	v.errs = append(v.errs, fieldError{path: path, reason: fmt.Sprintf(format, args...)})
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (v *validator) name(path, n string) {
	switch {
	case n == "":
		v.errf(path, "is required")
	case len(n) > 200:
		v.errf(path, "longer than 200 characters")
	case !nameRE.MatchString(n):
		v.errf(path, "%q: use letters, digits, '.', '_' and '-' only, starting with a letter or digit", n)
	}
}

func (v *validator) mesh(m *Mesh) {
	v.services = map[string]*Service{}
	for i := range m.Services {
		s := &m.Services[i]
		p := fmt.Sprintf("services[%d]", i)
		v.name(p+".name", s.Name)
		if _, dup := v.services[s.Name]; dup && s.Name != "" {
			v.errf(p+".name", "service %q is defined twice", s.Name)
		}
		v.services[s.Name] = s
	}
	for i := range m.Services {
		v.service(fmt.Sprintf("services[%d]", i), &m.Services[i])
	}
	if r := m.RateLimitService; r != nil {
		v.hasRLS = true
		switch s, ok := v.services[r.Service]; {
		case r.Service == "":
			v.errf("rate_limit_service.service", "is required")
		case !ok:
			v.errf("rate_limit_service.service", "unknown service %q", r.Service)
		case s.Protocol != ProtocolGRPC && s.Protocol != ProtocolHTTP2:
			v.errf("rate_limit_service.service", "service %q must have protocol grpc (the RLS speaks gRPC)", r.Service)
		}
		if r.Domain == "" {
			v.errf("rate_limit_service.domain", "is required")
		}
		if r.Timeout < 0 {
			v.errf("rate_limit_service.timeout", "must not be negative")
		}
		if r.Timeout == 0 {
			r.Timeout = 100 * time.Millisecond
		}
	}
	hosts := map[string]string{}
	vhNames := map[string]bool{}
	for i := range m.Routes {
		v.virtualHost(fmt.Sprintf("routes[%d]", i), &m.Routes[i], hosts, vhNames)
	}
	ids := map[string]bool{}
	for i := range m.Proxies {
		p := fmt.Sprintf("proxies[%d]", i)
		px := &m.Proxies[i]
		v.name(p+".id", px.ID)
		if ids[px.ID] && px.ID != "" {
			v.errf(p+".id", "proxy %q is defined twice", px.ID)
		}
		ids[px.ID] = true
		v.proxy(p, px)
	}
}

func (v *validator) service(p string, s *Service) {
	switch s.Protocol {
	case "":
		s.Protocol = ProtocolHTTP
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP:
	default:
		v.errf(p+".protocol", "%q is not one of http, http2, grpc, tcp", s.Protocol)
	}
	switch {
	case len(s.Endpoints) == 0 && s.DNS == nil:
		v.errf(p+".endpoints", "a service needs endpoints or dns")
	case len(s.Endpoints) > 0 && s.DNS != nil:
		v.errf(p+".dns", "give endpoints or dns, not both")
	}
	seen := map[string]bool{}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		ep := fmt.Sprintf("%s.endpoints[%d]", p, i)
		if net.ParseIP(e.Address) == nil {
			v.errf(ep+".address", "%q is not an IP address (use dns: for names)", e.Address)
		}
		v.port(ep+".port", e.Port)
		if e.Weight == 0 {
			e.Weight = 1
		}
		key := net.JoinHostPort(e.Address, strconv.Itoa(int(e.Port)))
		if seen[key] {
			v.errf(ep, "endpoint %s is listed twice", key)
		}
		seen[key] = true
	}
	if d := s.DNS; d != nil {
		if d.Host == "" {
			v.errf(p+".dns.host", "is required")
		}
		v.port(p+".dns.port", d.Port)
	}
	if s.ConnectTimeout < 0 {
		v.errf(p+".connect_timeout", "must not be negative")
	}
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = time.Second
	}
	if s.LB == nil {
		s.LB = &LoadBalancer{}
	}
	switch s.LB.Policy {
	case "":
		s.LB.Policy = LBRoundRobin
	case LBRoundRobin, LBLeastRequest, LBRandom, LBRingHash:
	default:
		v.errf(p+".lb.policy", "%q is not one of round_robin, least_request, ring_hash, random", s.LB.Policy)
	}
	if s.LB.Policy == LBRingHash && s.LB.HashOn == nil {
		v.errf(p+".lb.hash_on", "ring_hash needs hash_on (header, cookie or source_ip)")
	}
	if s.LB.HashOn != nil {
		if s.LB.Policy != LBRingHash {
			v.errf(p+".lb.hash_on", "only meaningful with policy ring_hash")
		}
		v.hashOn(p+".lb.hash_on", s.LB.HashOn)
	}
	if hc := s.HealthCheck; hc != nil {
		v.healthCheck(p+".health_check", hc)
	}
	if od := s.OutlierDetection; od != nil {
		if od.Interval < 0 || od.BaseEjectionTime < 0 {
			v.errf(p+".outlier_detection", "durations must not be negative")
		}
		if od.MaxEjectionPercent > 100 {
			v.errf(p+".outlier_detection.max_ejection_percent", "%d is above 100", od.MaxEjectionPercent)
		}
	}
}

func (v *validator) hashOn(p string, h *HashOn) {
	n := 0
	if h.Header != "" {
		n++
	}
	if h.Cookie != "" {
		n++
	}
	if h.SourceIP {
		n++
	}
	if n != 1 {
		v.errf(p, "give exactly one of header, cookie, source_ip")
	}
}

func (v *validator) healthCheck(p string, hc *HealthCheck) {
	switch hc.Type {
	case "":
		hc.Type = CheckHTTP
	case CheckHTTP, CheckTCP, CheckGRPC:
	default:
		v.errf(p+".type", "%q is not one of http, tcp, grpc", hc.Type)
	}
	if hc.Type == CheckHTTP {
		if hc.Path == "" {
			hc.Path = "/healthz"
		}
		if !strings.HasPrefix(hc.Path, "/") {
			v.errf(p+".path", "%q must start with /", hc.Path)
		}
		if len(hc.ExpectedStatuses) == 0 {
			hc.ExpectedStatuses = []int{200}
		}
		for i, st := range hc.ExpectedStatuses {
			if st < 100 || st > 599 {
				v.errf(fmt.Sprintf("%s.expected_statuses[%d]", p, i), "%d is not an HTTP status", st)
			}
		}
	} else {
		if hc.Path != "" || len(hc.ExpectedStatuses) > 0 || hc.Host != "" {
			v.errf(p, "path, host and expected_statuses are for type http only")
		}
	}
	if hc.GRPCService != "" && hc.Type != CheckGRPC {
		v.errf(p+".grpc_service", "is for type grpc only")
	}
	if hc.Interval < 0 || hc.Timeout < 0 {
		v.errf(p, "interval and timeout must not be negative")
	}
	if hc.Interval == 0 {
		hc.Interval = 5 * time.Second
	}
	if hc.Timeout == 0 {
		hc.Timeout = time.Second
	}
	if hc.HealthyThreshold == 0 {
		hc.HealthyThreshold = 1
	}
	if hc.UnhealthyThreshold == 0 {
		hc.UnhealthyThreshold = 2
	}
}

func (v *validator) port(p string, port uint32) {
	if port == 0 || port > 65535 {
		v.errf(p, "%d is not a port (1-65535)", port)
	}
}

func (v *validator) hostPort(p, s string) {
	if s == "" {
		v.errf(p, "is required (host:port)")
		return
	}
	h, port, err := net.SplitHostPort(s)
	if err != nil {
		v.errf(p, "%q is not host:port: %v", s, err)
		return
	}
	if net.ParseIP(h) == nil {
		v.errf(p, "%q: host must be an IP address", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		v.errf(p, "%q: port must be 1-65535", s)
	}
}

func (v *validator) virtualHost(p string, vh *VirtualHost, hosts map[string]string, names map[string]bool) {
	v.name(p+".name", vh.Name)
	if names[vh.Name] && vh.Name != "" {
		v.errf(p+".name", "virtual host %q is defined twice", vh.Name)
	}
	names[vh.Name] = true
	if len(vh.Hosts) == 0 {
		v.errf(p+".hosts", "needs at least one host (or \"*\")")
	}
	for i, h := range vh.Hosts {
		hp := fmt.Sprintf("%s.hosts[%d]", p, i)
		if h == "" || strings.ContainsAny(h, " /\t") {
			v.errf(hp, "%q is not a host name", h)
			continue
		}
		if other, dup := hosts[strings.ToLower(h)]; dup {
			v.errf(hp, "host %q is already served by virtual host %q", h, other)
		}
		hosts[strings.ToLower(h)] = vh.Name
	}
	if len(vh.HTTP) == 0 {
		v.errf(p+".http", "needs at least one route")
	}
	for i := range vh.HTTP {
		v.route(fmt.Sprintf("%s.http[%d]", p, i), &vh.HTTP[i])
	}
}

func (v *validator) regex(p, re string) {
	if _, err := regexp.Compile(re); err != nil {
		v.errf(p, "bad regex: %v", err)
	}
}

func (v *validator) route(p string, r *Route) {
	m := &r.Match
	n := 0
	for _, s := range []string{m.Prefix, m.Path, m.Regex} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		v.errf(p+".match", "give one of prefix, path, regex")
	}
	if n == 0 {
		m.Prefix = "/"
	}
	if m.Prefix != "" && !strings.HasPrefix(m.Prefix, "/") {
		v.errf(p+".match.prefix", "%q must start with /", m.Prefix)
	}
	if m.Path != "" && !strings.HasPrefix(m.Path, "/") {
		v.errf(p+".match.path", "%q must start with /", m.Path)
	}
	if m.Regex != "" {
		v.regex(p+".match.regex", m.Regex)
	}
	for i := range m.Headers {
		v.headerMatch(fmt.Sprintf("%s.match.headers[%d]", p, i), &m.Headers[i])
	}
	for i, q := range m.Query {
		qp := fmt.Sprintf("%s.match.query[%d]", p, i)
		if q.Name == "" {
			v.errf(qp+".name", "is required")
		}
		if count(q.Exact != nil, q.Regex != nil, q.Present != nil) != 1 {
			v.errf(qp, "give exactly one of exact, regex, present")
		}
		if q.Regex != nil {
			v.regex(qp+".regex", *q.Regex)
		}
	}
	if count(len(r.Route) > 0, r.Redirect != nil, r.DirectResponse != nil) != 1 {
		v.errf(p, "give exactly one of route, redirect, direct_response")
	}
	var total uint32
	for i := range r.Route {
		d := &r.Route[i]
		dp := fmt.Sprintf("%s.route[%d]", p, i)
		v.serviceRef(dp+".service", d.Service, true)
		if d.Weight == 0 && len(r.Route) == 1 {
			d.Weight = 1
		}
		if d.Weight > 1_000_000 {
			v.errf(dp+".weight", "%d is above 1000000", d.Weight)
		}
		total += d.Weight
	}
	if len(r.Route) > 0 && total == 0 {
		v.errf(p+".route", "weights add up to 0")
	}
	if rd := r.Redirect; rd != nil {
		switch rd.Code {
		case 0:
			rd.Code = 301
		case 301, 302, 303, 307, 308:
		default:
			v.errf(p+".redirect.code", "%d is not one of 301, 302, 303, 307, 308", rd.Code)
		}
		if rd.Path != "" && !strings.HasPrefix(rd.Path, "/") {
			v.errf(p+".redirect.path", "%q must start with /", rd.Path)
		}
	}
	if dr := r.DirectResponse; dr != nil && (dr.Status < 200 || dr.Status > 599) {
		v.errf(p+".direct_response.status", "%d is not an HTTP status 200-599", dr.Status)
	}
	routeOnly := func(field string, set bool) {
		if set && len(r.Route) == 0 {
			v.errf(p+"."+field, "only applies to a route action (route:)")
		}
	}
	routeOnly("timeout", r.Timeout != 0)
	routeOnly("retries", r.Retries != nil)
	routeOnly("rewrite", r.Rewrite != nil)
	routeOnly("mirror", r.Mirror != nil)
	routeOnly("rate_limits", len(r.RateLimits) > 0)
	routeOnly("hash_on", r.HashOn != nil)
	if r.Timeout < 0 {
		v.errf(p+".timeout", "must not be negative")
	}
	if rt := r.Retries; rt != nil {
		if rt.Attempts == 0 {
			rt.Attempts = 1
		}
		if rt.RetryOn == "" {
			rt.RetryOn = "5xx,connect-failure,reset"
		}
		for _, t := range strings.Split(rt.RetryOn, ",") {
			if !retryOn[strings.TrimSpace(t)] {
				v.errf(p+".retries.retry_on", "unknown condition %q", t)
			}
		}
		if rt.PerTryTimeout < 0 {
			v.errf(p+".retries.per_try_timeout", "must not be negative")
		}
	}
	if f := r.Fault; f != nil {
		if f.Abort == nil && f.Delay == nil {
			v.errf(p+".fault", "give abort, delay or both")
		}
		if a := f.Abort; a != nil {
			switch {
			case (a.HTTPStatus != 0) == (a.GRPCStatus != nil):
				v.errf(p+".fault.abort", "give exactly one of http_status, grpc_status")
			case a.GRPCStatus != nil && *a.GRPCStatus > 16:
				v.errf(p+".fault.abort.grpc_status", "%d is not a gRPC status code (0-16)", *a.GRPCStatus)
			case a.GRPCStatus == nil && (a.HTTPStatus < 200 || a.HTTPStatus > 599):
				v.errf(p+".fault.abort.http_status", "%d is not an HTTP status 200-599", a.HTTPStatus)
			}
			v.percent(p+".fault.abort.percent", &a.Percent)
		}
		if d := f.Delay; d != nil {
			if d.Fixed <= 0 {
				v.errf(p+".fault.delay.fixed", "must be a positive duration")
			}
			v.percent(p+".fault.delay.percent", &d.Percent)
		}
	}
	if h := r.Headers; h != nil {
		v.headerOps(p+".headers.request", h.Request)
		v.headerOps(p+".headers.response", h.Response)
	}
	if rw := r.Rewrite; rw != nil {
		if rw.Prefix == "" && rw.Host == "" {
			v.errf(p+".rewrite", "give prefix, host or both")
		}
		if rw.Prefix != "" && m.Prefix == "" {
			v.errf(p+".rewrite.prefix", "needs a prefix match")
		}
	}
	if mr := r.Mirror; mr != nil {
		v.serviceRef(p+".mirror.service", mr.Service, true)
		v.percent(p+".mirror.percent", &mr.Percent)
	}
	if len(r.RateLimits) > 0 && !v.hasRLS {
		v.errf(p+".rate_limits", "needs a top-level rate_limit_service")
	}
	for i := range r.RateLimits {
		rl := &r.RateLimits[i]
		rp := fmt.Sprintf("%s.rate_limits[%d]", p, i)
		if len(rl.Actions) == 0 {
			v.errf(rp+".actions", "needs at least one action")
		}
		for j := range rl.Actions {
			v.rateLimitAction(fmt.Sprintf("%s.actions[%d]", rp, j), &rl.Actions[j])
		}
	}
	if r.HashOn != nil {
		v.hashOn(p+".hash_on", r.HashOn)
	}
}

var retryOn = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true, "connect-failure": true,
	"envoy-ratelimited": true, "retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"retriable-headers": true, "http3-post-connect-failure": true,
	// gRPC status based
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

func count(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (v *validator) percent(p string, pct *float64) {
	if *pct < 0 || *pct > 100 {
		v.errf(p, "%g is not a percentage 0-100", *pct)
	}
	if *pct == 0 {
		*pct = 100
	}
}

func (v *validator) serviceRef(p, name string, needHTTP bool) {
	s, ok := v.services[name]
	switch {
	case name == "":
		v.errf(p, "is required")
	case !ok:
		v.errf(p, "unknown service %q", name)
	case needHTTP && s.Protocol == ProtocolTCP:
		v.errf(p, "service %q speaks tcp; HTTP routes need an http, http2 or grpc service", name)
	}
}

func (v *validator) headerMatch(p string, h *HeaderMatch) {
	if h.Name == "" {
		v.errf(p+".name", "is required")
	}
	if count(h.Exact != nil, h.Prefix != nil, h.Regex != nil, h.Present != nil) != 1 {
		v.errf(p, "give exactly one of exact, prefix, regex, present")
	}
	if h.Regex != nil {
		v.regex(p+".regex", *h.Regex)
	}
}

func (v *validator) headerOps(p string, o *HeaderOps) {
	if o == nil {
		return
	}
	check := func(field, name string) {
		if name == "" || strings.HasPrefix(name, ":") || strings.ContainsAny(name, " \t\r\n") || strings.EqualFold(name, "host") {
			v.errf(p+"."+field, "%q cannot be edited (empty, pseudo-header, host or has spaces)", name)
		}
	}
	for _, k := range SortedNames(o.Set) {
		check("set."+k, k)
	}
	for _, k := range SortedNames(o.Add) {
		check("add."+k, k)
	}
	for i, k := range o.Remove {
		check(fmt.Sprintf("remove[%d]", i), k)
	}
}

func (v *validator) rateLimitAction(p string, a *RateLimitAction) {
	if count(a.RequestHeaders != nil, a.RemoteAddress != nil, a.GenericKey != nil, a.HeaderValueMatch != nil,
		a.DestinationCluster != nil, a.SourceCluster != nil) != 1 {
		v.errf(p, "give exactly one of request_headers, remote_address, generic_key, header_value_match, destination_cluster, source_cluster")
		return
	}
	switch {
	case a.RequestHeaders != nil:
		if a.RequestHeaders.Header == "" {
			v.errf(p+".request_headers.header", "is required")
		}
		if a.RequestHeaders.Key == "" {
			v.errf(p+".request_headers.key", "is required")
		}
	case a.GenericKey != nil:
		if a.GenericKey.Value == "" {
			v.errf(p+".generic_key.value", "is required")
		}
	case a.HeaderValueMatch != nil:
		hv := a.HeaderValueMatch
		if hv.Value == "" {
			v.errf(p+".header_value_match.value", "is required")
		}
		if len(hv.Headers) == 0 {
			v.errf(p+".header_value_match.headers", "needs at least one header matcher")
		}
		for i := range hv.Headers {
			v.headerMatch(fmt.Sprintf("%s.header_value_match.headers[%d]", p, i), &hv.Headers[i])
		}
	}
}

// tcpOutbound: each entry names a tcp service once, on a port of its own.
func (v *validator) tcpOutbound(p string, px *Proxy) {
	listens := map[string]string{px.Outbound.Listen: "the outbound listener"}
	if px.Inbound != nil {
		listens[px.Inbound.Listen] = "the inbound listener"
	}
	services := map[string]bool{}
	for i, o := range px.Outbound.TCP {
		q := fmt.Sprintf("%s[%d]", p, i)
		v.serviceRef(q+".service", o.Service, false)
		if s, ok := v.services[o.Service]; ok && s.Protocol != ProtocolTCP {
			v.errf(q+".service", "service %q speaks %s; only tcp services get a tcp listener (HTTP goes through outbound.listen)", o.Service, s.Protocol)
		}
		if services[o.Service] {
			v.errf(q+".service", "service %q has a tcp listener already", o.Service)
		}
		services[o.Service] = true
		v.hostPort(q+".listen", o.Listen)
		if other, ok := listens[o.Listen]; ok && o.Listen != "" {
			v.errf(q+".listen", "%s is also %s", o.Listen, other)
		}
		listens[o.Listen] = fmt.Sprintf("the tcp listener of %q", o.Service)
	}
}

func (v *validator) proxy(p string, px *Proxy) {
	switch px.Role {
	case RoleSidecar:
		v.serviceRef(p+".service", px.Service, false)
		if px.Inbound == nil {
			v.errf(p+".inbound", "a sidecar needs an inbound listener (listen, app)")
		} else {
			v.hostPort(p+".inbound.listen", px.Inbound.Listen)
			v.hostPort(p+".inbound.app", px.Inbound.App)
			if px.Inbound.Timeout < 0 {
				v.errf(p+".inbound.timeout", "must not be negative")
			}
		}
		if px.Outbound == nil {
			v.errf(p+".outbound", "a sidecar needs an outbound listener (listen)")
		} else {
			v.hostPort(p+".outbound.listen", px.Outbound.Listen)
			if px.Inbound != nil && px.Inbound.Listen == px.Outbound.Listen {
				v.errf(p+".outbound.listen", "%s is also the inbound listener", px.Outbound.Listen)
			}
			v.tcpOutbound(p+".outbound.tcp", px)
		}
		if px.Listen != "" || len(px.Routes) > 0 {
			v.errf(p, "listen and routes are for ingress proxies; a sidecar routes with the mesh routes")
		}
	case RoleIngress:
		v.hostPort(p+".listen", px.Listen)
		if px.Inbound != nil || px.Outbound != nil {
			v.errf(p, "inbound and outbound are for sidecars")
		}
		if px.Service != "" {
			v.errf(p+".service", "is for sidecars")
		}
		if len(px.Routes) == 0 {
			v.errf(p+".routes", "an ingress needs at least one virtual host")
		}
		hosts := map[string]string{}
		names := map[string]bool{}
		for i := range px.Routes {
			v.virtualHost(fmt.Sprintf("%s.routes[%d]", p, i), &px.Routes[i], hosts, names)
		}
	case "":
		v.errf(p+".role", "is required (sidecar or ingress)")
	default:
		v.errf(p+".role", "%q is not one of sidecar, ingress", px.Role)
	}
}
