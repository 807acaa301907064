// Package ratelimit is the behaviour of Envoy's envoy.filters.http.ratelimit
// for the sidemesh proxy: route and virtual-host rate_limits become
// descriptors, one ShouldRateLimit call per request goes to RLS over a
// shared gRPC connection with a bounded timeout, and the answer becomes a
// Decision (allow, or 429 / RESOURCE_EXHAUSTED with x-envoy-ratelimited;
// RLS headers and X-RateLimit-* headers; failure_mode_deny on errors).
package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// DefaultTimeout is Envoy's default RLS call timeout.
const DefaultTimeout = 20 * time.Millisecond

// RLSClient is the part of the RLS API the filter needs; a
// rlsv3.RateLimitServiceClient over one shared *grpc.ClientConn.
type RLSClient interface {
	ShouldRateLimit(ctx context.Context, in *rlsv3.RateLimitRequest, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error)
}

// deadlineClient bounds a call by a timeout without a derived context per
// call (the batch client).
type deadlineClient interface {
	ShouldRateLimitWithin(ctx context.Context, in *rlsv3.RateLimitRequest, timeout time.Duration, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error)
}

// Options are what the proto does not carry.
type Options struct {
	// LocalCluster is this proxy's service cluster (source_cluster action).
	LocalCluster string
	// Registerer receives the stats counters (optional).
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// RouteInfo is the matched route as the filter needs it.
type RouteInfo struct {
	Route, VirtualHost *Policy
	// IncludeVH: route.include_vh_rate_limits (or vh_rate_limits INCLUDE).
	// Without it the virtual host's limits apply only when the route has
	// none (Envoy's default OVERRIDE).
	IncludeVH          bool
	DestinationCluster string
	// Domain overrides the filter's domain (RateLimitPerRoute.domain).
	Domain string
}

// WithPerRoute applies a route's RateLimitPerRoute (typed_per_filter_config)
// at config time: vh_rate_limits (OVERRIDE, INCLUDE, IGNORE), domain, and
// rate_limits replacing the route's own.
func (ri RouteInfo) WithPerRoute(p *ratelimitv3.RateLimitPerRoute) (RouteInfo, error) {
	if err := p.ValidateAll(); err != nil {
		return ri, fmt.Errorf("ratelimit per-route config: %w", err)
	}
	switch p.GetVhRateLimits() {
	case ratelimitv3.RateLimitPerRoute_INCLUDE:
		ri.IncludeVH = true
	case ratelimitv3.RateLimitPerRoute_IGNORE:
		ri.VirtualHost = nil
	}
	if p.GetDomain() != "" {
		ri.Domain = p.GetDomain()
	}
	if rl := p.GetRateLimits(); len(rl) > 0 && p.GetOverrideOption() != ratelimitv3.RateLimitPerRoute_IGNORE_POLICY {
		pol, err := Compile(rl)
		if err != nil {
			return ri, fmt.Errorf("ratelimit per-route config: %w", err)
		}
		ri.Route = pol
	}
	return ri, nil
}

// Outcome names what happened to a request.
type Outcome string

// Outcomes; the first four are Envoy's stats names.
const (
	OK                 Outcome = "ok"
	OverLimit          Outcome = "over_limit"
	Error              Outcome = "error" // and denied (failure_mode_deny)
	FailureModeAllowed Outcome = "failure_mode_allowed"
	NotApplied         Outcome = "not_applied" // no descriptors, or request type excluded
)

// Decision is the filter's answer for one request.
type Decision struct {
	Outcome Outcome
	// Deny: answer with Status (HTTP) or GRPCStatus (gRPC requests)
	// instead of forwarding.
	Deny       bool
	Status     int
	GRPCStatus codes.Code
	// ResponseHeaders go on the response (denial or upstream's);
	// RequestHeaders on the request forwarded upstream.
	ResponseHeaders http.Header
	RequestHeaders  http.Header
}

// Stats are cumulative counters.
type Stats struct {
	OK, OverLimit, Error, FailureModeAllowed uint64
}

// Filter is one configured envoy.filters.http.ratelimit instance.
type Filter struct {
	domain        string
	stage         uint32
	requestType   string
	timeout       time.Duration
	deny          bool
	asExhausted   bool
	xHeaders      bool
	noRLHeader    bool
	limitedStatus int
	errorStatus   int
	retryAfter    bool
	own           *Policy // filter-level rate_limits: replace the route's
	client        RLSClient
	opts          Options
	// promOK, promOver, promErr, promAllowed: this domain's children of
	// sidemesh_proxy_ratelimit_total, looked up once (nil without a
	// Registerer).
	promOK, promOver, promErr, promAllowed prometheus.Counter

	ok, over, errs, allowed atomic.Uint64
}

// New validates cfg and builds a filter calling RLS through client.
func New(cfg *ratelimitv3.RateLimit, client RLSClient, opts Options) (*Filter, error) {
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("ratelimit filter: %w", err)
	}
	f := &Filter{
		domain: cfg.GetDomain(), stage: cfg.GetStage(), requestType: cfg.GetRequestType(),
		timeout: DefaultTimeout, deny: cfg.GetFailureModeDeny(), asExhausted: cfg.GetRateLimitedAsResourceExhausted(),
		xHeaders:   cfg.GetEnableXRatelimitHeaders() == ratelimitv3.RateLimit_DRAFT_VERSION_03,
		noRLHeader: cfg.GetDisableXEnvoyRatelimitedHeader(), limitedStatus: http.StatusTooManyRequests,
		errorStatus: http.StatusInternalServerError, client: client, opts: opts,
	}
	f.retryAfter = cfg.GetEnableRetryAfterHeader()
	if rl := cfg.GetRateLimits(); len(rl) > 0 {
		p, err := Compile(rl)
		if err != nil {
			return nil, fmt.Errorf("ratelimit filter: %w", err)
		}
		p.anyStage = true
		f.own = p
	}
	if f.requestType == "" {
		f.requestType = "both"
	}
	if t := cfg.GetTimeout(); t != nil {
		f.timeout = t.AsDuration()
	}
	if s := cfg.GetRateLimitedStatus(); s != nil && s.GetCode() >= 400 {
		f.limitedStatus = int(s.GetCode())
	}
	if s := cfg.GetStatusOnError(); s != nil && s.GetCode() >= 400 {
		f.errorStatus = int(s.GetCode())
	}
	if f.opts.Log == nil {
		f.opts.Log = slog.New(slog.DiscardHandler)
	}
	if r := opts.Registerer; r != nil {
		prom := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidemesh_proxy_ratelimit_total", Help: "Rate limit filter decisions by domain and result (Envoy's ok, over_limit, error, failure_mode_allowed).",
		}, []string{"domain", "result"})
		if err := r.Register(prom); err != nil {
			if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
				prom = are.ExistingCollector.(*prometheus.CounterVec)
			} else {
				return nil, fmt.Errorf("ratelimit filter: stats: %w", err)
			}
		}
		f.promOK = prom.WithLabelValues(f.domain, string(OK))
		f.promOver = prom.WithLabelValues(f.domain, string(OverLimit))
		f.promErr = prom.WithLabelValues(f.domain, string(Error))
		f.promAllowed = prom.WithLabelValues(f.domain, string(FailureModeAllowed))
	}
	return f, nil
}

// RLSCluster is the cluster the filter's rate_limit_service names (the
// proxy core dials that cluster's endpoints once and shares the client).
func RLSCluster(cfg *ratelimitv3.RateLimit) string {
	return cfg.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName()
}

// Stats returns the counters.
func (f *Filter) Stats() Stats {
	return Stats{OK: f.ok.Load(), OverLimit: f.over.Load(), Error: f.errs.Load(), FailureModeAllowed: f.allowed.Load()}
}

func (f *Filter) count(o Outcome) {
	var c prometheus.Counter
	switch o {
	case OK:
		f.ok.Add(1)
		c = f.promOK
	case OverLimit:
		f.over.Add(1)
		c = f.promOver
	case Error:
		f.errs.Add(1)
		c = f.promErr
	case FailureModeAllowed:
		f.errs.Add(1) // Envoy counts both error and failure_mode_allowed
		f.allowed.Add(1)
		if f.promErr != nil {
			f.promErr.Inc()
		}
		c = f.promAllowed
	}
	if c != nil {
		c.Inc()
	}
}

// Descriptors are the descriptors r would send.
func (f *Filter) Descriptors(r *http.Request, route RouteInfo) []*rlcommonv3.RateLimitDescriptor {
	attrs := RequestAttrs{RemoteAddr: r.RemoteAddr, LocalCluster: f.opts.LocalCluster, DestinationCluster: route.DestinationCluster}
	var ds []*rlcommonv3.RateLimitDescriptor
	if f.own != nil {
		return f.own.Descriptors(f.stage, r.Header, &attrs, ds)
	}
	ds = route.Route.Descriptors(f.stage, r.Header, &attrs, ds)
	if route.IncludeVH || route.Route == nil || len(route.Route.entries) == 0 {
		ds = route.VirtualHost.Descriptors(f.stage, r.Header, &attrs, ds)
	}
	return ds
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// Check decides one request. It blocks for at most the filter timeout.
func (f *Filter) Check(ctx context.Context, r *http.Request, route RouteInfo) Decision {
	internal := r.Header.Get("X-Envoy-Internal") == "true"
	if (f.requestType == "internal" && !internal) || (f.requestType == "external" && internal) {
		return Decision{Outcome: NotApplied}
	}
	ds := f.Descriptors(r, route)
	if len(ds) == 0 {
		return Decision{Outcome: NotApplied}
	}
	domain := f.domain
	if route.Domain != "" {
		domain = route.Domain
	}
	req := &rlsv3.RateLimitRequest{Domain: domain, Descriptors: ds, HitsAddend: 1}
	var resp *rlsv3.RateLimitResponse
	var err error
	if dc, ok := f.client.(deadlineClient); ok {
		resp, err = dc.ShouldRateLimitWithin(ctx, req, f.timeout)
	} else {
		cctx, cancel := context.WithTimeout(ctx, f.timeout)
		resp, err = f.client.ShouldRateLimit(cctx, req)
		cancel()
	}
	if err != nil {
		if ctx.Err() != nil {
			return Decision{Outcome: NotApplied} // the client went away
		}
		f.opts.Log.Debug("rls call failed", "domain", f.domain, "err", err)
		if f.deny {
			f.count(Error)
			return f.denied(Decision{Outcome: Error, Deny: true, Status: f.errorStatus}, r, codes.Unavailable)
		}
		f.count(FailureModeAllowed)
		return Decision{Outcome: FailureModeAllowed}
	}
	d := Decision{Outcome: OK}
	if hs := resp.GetResponseHeadersToAdd(); len(hs) > 0 || f.xHeaders {
		d.ResponseHeaders = http.Header{}
		addHeaders(d.ResponseHeaders, hs)
		if f.xHeaders {
			xRateLimitHeaders(d.ResponseHeaders, resp.GetStatuses())
		}
		if len(d.ResponseHeaders) == 0 {
			d.ResponseHeaders = nil
		}
	}
	if hs := resp.GetRequestHeadersToAdd(); len(hs) > 0 {
		d.RequestHeaders = http.Header{}
		addHeaders(d.RequestHeaders, hs)
	}
	if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
		f.count(OverLimit)
		d.Outcome, d.Deny, d.Status = OverLimit, true, f.limitedStatus
		if d.ResponseHeaders == nil {
			d.ResponseHeaders = http.Header{}
		}
		if !f.noRLHeader {
			d.ResponseHeaders.Set("X-Envoy-Ratelimited", "true")
		}
		if f.retryAfter && d.Status == http.StatusTooManyRequests && d.ResponseHeaders.Get("Retry-After") == "" {
			// The largest wait among the over-limit descriptors, ≥ 1 s.
			var wait time.Duration
			for _, s := range resp.GetStatuses() {
				if s.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
					wait = max(wait, s.GetDurationUntilReset().AsDuration())
				}
			}
			if wait > 0 {
				d.ResponseHeaders.Set("Retry-After", strconv.FormatInt(max(int64((wait+time.Second-1)/time.Second), 1), 10))
			}
		}
		code := codes.Unavailable
		if f.asExhausted {
			code = codes.ResourceExhausted
		}
		return f.denied(d, r, code)
	}
	f.count(OK)
	return d
}

func (f *Filter) denied(d Decision, r *http.Request, code codes.Code) Decision {
	if isGRPC(r) {
		d.GRPCStatus = code
	}
	return d
}

func addHeaders(h http.Header, hs []*corev3.HeaderValue) {
	for _, kv := range hs {
		v := kv.GetValue()
		if v == "" {
			v = string(kv.GetRawValue())
		}
		h.Add(kv.GetKey(), v)
	}
}

// xRateLimitHeaders writes draft-03 X-RateLimit-* from the descriptor
// status closest to its limit.
func xRateLimitHeaders(h http.Header, sts []*rlsv3.RateLimitResponse_DescriptorStatus) {
	var min *rlsv3.RateLimitResponse_DescriptorStatus
	var policies []string
	for _, s := range sts {
		l := s.GetCurrentLimit()
		if l == nil {
			continue
		}
		if min == nil || s.GetLimitRemaining() < min.GetLimitRemaining() {
			min = s
		}
		p := fmt.Sprintf("%d;w=%d", l.GetRequestsPerUnit(), unitSeconds(l.GetUnit()))
		if l.GetName() != "" {
			p += fmt.Sprintf(";name=%q", l.GetName())
		}
		policies = append(policies, p)
	}
	if min == nil {
		return
	}
	h.Set("X-RateLimit-Limit", strconv.FormatUint(uint64(min.GetCurrentLimit().GetRequestsPerUnit()), 10)+", "+strings.Join(policies, ", "))
	h.Set("X-RateLimit-Remaining", strconv.FormatUint(uint64(min.GetLimitRemaining()), 10))
	if r := min.GetDurationUntilReset(); r != nil {
		h.Set("X-RateLimit-Reset", strconv.FormatInt(int64(r.AsDuration().Seconds()), 10))
	}
}

func unitSeconds(u rlsv3.RateLimitResponse_RateLimit_Unit) int64 {
	switch u {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return 1
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return 60
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return 3600
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return 86400
	case rlsv3.RateLimitResponse_RateLimit_WEEK:
		return 7 * 86400
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 30 * 86400
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 365 * 86400
	}
	return 0
}
