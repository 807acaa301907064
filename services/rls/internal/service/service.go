// Package service is the envoy.service.ratelimit.v3 ShouldRateLimit handler:
// it validates the request, matches descriptors to rules, applies replaces,
// the local over-limit cache and the backend, and answers as Envoy expects.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// FailureMode is the answer when the backend is unavailable.
type FailureMode int

// Failure modes: Allow (default, like Envoy's filter) answers OK, Deny
// answers OVER_LIMIT.
const (
	FailAllow FailureMode = iota
	FailDeny
)

// ParseFailureMode parses "allow" or "deny".
func ParseFailureMode(s string) (FailureMode, error) {
	switch s {
	case "allow":
		return FailAllow, nil
	case "deny":
		return FailDeny, nil
	}
	return 0, fmt.Errorf("must be allow or deny, got %q", s)
}

// Options configures the service.
type Options struct {
	Backend     limiter.Backend
	KeyPrefix   string
	FailureMode FailureMode
	// ResponseHeaders adds RateLimit-Limit/-Remaining/-Reset (and
	// Retry-After when over limit) to response_headers_to_add.
	ResponseHeaders bool
	// LocalCache, when set, answers keys known over limit without the backend.
	LocalCache *limiter.OverCache
	// QuotaMode treats every descriptor as quota_mode (envoyproxy/ratelimit
	// QUOTA_MODE=true).
	QuotaMode bool
	// DynamicMetadata fills the response's dynamic_metadata
	// (envoyproxy/ratelimit RESPONSE_DYNAMIC_METADATA=true).
	DynamicMetadata bool
	// MaxMetricValues bounds the distinct metric labels that carry request
	// values (detailed_metric, value_to_metric) per rule; 0 means
	// DefaultMaxMetricValues.
	MaxMetricValues int
	Limits          Limits
	NearLimitRatio  float64
	Now             func() time.Time
	Log             *slog.Logger
	Registerer      prometheus.Registerer
}

// DefaultMaxMetricValues is the default bound on value-carrying metric
// labels per rule.
const DefaultMaxMetricValues = 1000

// Service implements rlsv3.RateLimitServiceServer.
type Service struct {
	rlsv3.UnimplementedRateLimitServiceServer
	o       Options
	rules   atomic.Pointer[rules.Config]
	m       *metrics
	lastLog atomic.Int64
}

// New returns a service with no rules (every request answers OK) until
// SetRules.
func New(o Options) (*Service, error) {
	if o.Backend == nil {
		return nil, errors.New("service: no backend")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Limits == (Limits{}) {
		o.Limits = DefaultLimits
	}
	if o.NearLimitRatio <= 0 {
		o.NearLimitRatio = 0.8
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.MaxMetricValues <= 0 {
		o.MaxMetricValues = DefaultMaxMetricValues
	}
	s := &Service{o: o}
	cacheLen := func() float64 { return 0 }
	if o.LocalCache != nil {
		cacheLen = func() float64 { return float64(o.LocalCache.Len()) }
	}
	m, err := newMetrics(o.Registerer, cacheLen, o.MaxMetricValues)
	if err != nil {
		return nil, fmt.Errorf("service metrics: %w", err)
	}
	s.m = m
	s.rules.Store(&rules.Config{})
	return s, nil
}

// SetRules swaps the rule set (hot reload). The local over-limit cache is
// cleared: limits may have changed.
func (s *Service) SetRules(c *rules.Config) {
	s.rules.Store(c)
	if s.o.LocalCache != nil {
		s.o.LocalCache.Clear()
	}
}

// Rules returns the current rule set.
func (s *Service) Rules() *rules.Config { return s.rules.Load() }

// slot is the per-descriptor working state of one request.
type slot struct {
	limit   *rules.RateLimit
	hits    uint32
	item    int // index in items, -1 if not counted by the backend
	cached  bool
	res     limiter.Result
	counter *ruleCounters
	// quota: quota_mode (or the global switch): over limit does not deny
	// unless every quota descriptor of the request is over.
	quota bool
}

// pending is one request between prepare (rules, local decisions, backend
// items) and finish (backend results → response). Unary calls keep it on
// the stack; a batch keeps one per call.
type pending struct {
	req             *rlsv3.RateLimitRequest
	start           time.Time
	now             time.Time
	nowUS           int64
	resp            *rlsv3.RateLimitResponse
	err             error // answered in prepare (invalid request)
	answered        bool  // answered in prepare (resp or err is final)
	slots           []slot
	items           []limiter.Item
	results         []limiter.Result
	rejectedByCache bool

	slotBuf [4]slot
	itemBuf [4]limiter.Item
	resBuf  [4]limiter.Result
}

// ShouldRateLimit implements the RLS API.
func (s *Service) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	var p pending
	var err error
	if s.prepare(&p, req) {
		err = s.o.Backend.Check(ctx, p.now, p.items, p.results)
	}
	return s.finish(&p, err)
}

// prepare validates req, matches its descriptors and decides what it can
// without the backend. It reports whether the backend must count p.items
// into p.results.
func (s *Service) prepare(p *pending, req *rlsv3.RateLimitRequest) bool {
	p.req, p.start = req, time.Now()
	if err := s.o.Limits.Validate(req); err != nil {
		s.m.code("invalid").Inc()
		p.err, p.answered = err, true
		return false
	}
	cfg := s.rules.Load()
	domain := req.GetDomain()
	descs := req.GetDescriptors()
	resp := &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses:    make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(descs)),
	}
	p.resp = resp
	if !cfg.HasDomain(domain) && !hasOverride(descs) {
		s.m.noDomain.Inc()
		for i := range resp.Statuses {
			resp.Statuses[i] = &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		}
		if s.o.DynamicMetadata {
			resp.DynamicMetadata = dynamicMetadata(req, nil, resp.Statuses)
		}
		s.m.code("ok").Inc()
		p.answered = true
		return false
	}
	reqHits := req.GetHitsAddend()
	if reqHits == 0 {
		reqHits = 1
	}
	slots := p.slotBuf[:0]
	var replaced map[string]bool
	for _, d := range descs {
		sl := slot{item: -1, hits: reqHits}
		if h := d.GetHitsAddend(); h != nil {
			sl.hits = uint32(h.GetValue())
		}
		if o := d.GetLimit(); o != nil {
			sl.limit = overrideLimit(o)
		} else {
			sl.limit = cfg.Match(domain, d.GetEntries())
		}
		if sl.limit != nil {
			for _, r := range sl.limit.Replaces {
				if replaced == nil {
					replaced = map[string]bool{}
				}
				replaced[r] = true
			}
		}
		slots = append(slots, sl)
	}
	now := s.o.Now()
	nowUS := now.UnixMicro()
	p.now, p.nowUS = now, nowUS
	items := p.itemBuf[:0]
	rejectedByCache := false
	// Quota descriptors as answer counts them: matched quota_mode limits,
	// and under the global switch every descriptor but unlimited ones. The
	// group can deny the request (all of them over) only when each of them
	// can be over: not when one is unmatched (under the global switch: it
	// passes) or shadow (never counted over). Then its members go to the
	// backend as QuotaMember, so that a request denied by its quotas is
	// rejected there too and charges nothing; otherwise as CountOnly.
	quotaDescs, quotaCanDeny := 0, true
	for i := range slots {
		sl := &slots[i]
		if l := sl.limit; l != nil && l.Name != "" && replaced[l.Name] {
			sl.limit = nil
		}
		l := sl.limit
		switch {
		case l == nil:
			if s.o.QuotaMode {
				quotaDescs++
				quotaCanDeny = false
			}
		case !l.Unlimited && (s.o.QuotaMode || l.QuotaMode):
			sl.quota = true
			quotaDescs++
			if l.ShadowMode {
				quotaCanDeny = false
			}
		}
	}
	quotaSent := 0
	for i := range slots {
		sl := &slots[i]
		l := sl.limit
		if l == nil {
			continue
		}
		sl.counter = s.ruleCounters(domain, l, descs[i].GetEntries())
		if l.Unlimited {
			continue
		}
		enforce := limiter.Enforced
		switch {
		case l.ShadowMode:
			enforce = limiter.CountOnly
		case sl.quota && quotaCanDeny:
			enforce = limiter.QuotaMember
		case sl.quota:
			enforce = limiter.CountOnly
		}
		it := limiter.Item{
			Key:       limiter.Key(s.o.KeyPrefix, l.Algorithm, rules.UnitDuration(l.Unit), domain, l.KeyValues(descs[i].GetEntries())...),
			Algorithm: l.Algorithm, Unit: rules.UnitDuration(l.Unit), Limit: l.RequestsPerUnit,
			Burst: l.Burst, Hits: sl.hits, Enforce: enforce,
		}
		// Decided locally, without the backend: a zero limit ("ban"), or a
		// key the local cache knows is over limit.
		if it.Limit == 0 && sl.hits > 0 {
			sl.cached, sl.res = true, limiter.Result{Over: true}
		} else if s.o.LocalCache != nil && sl.hits > 0 {
			if until, ok := s.o.LocalCache.Over(it.Key, nowUS); ok {
				sl.cached = true
				sl.res = limiter.Result{Over: true, RetryAfter: time.Duration(until-nowUS) * time.Microsecond}
			}
		}
		if sl.cached {
			if it.Enforce == limiter.Enforced {
				rejectedByCache = true
			}
			continue
		}
		if it.Enforce == limiter.QuotaMember {
			quotaSent++
		}
		sl.item = len(items)
		items = append(items, it)
	}
	// Every quota descriptor is decided over without the backend: the
	// request is denied (answer agrees), so nothing may be charged.
	if quotaCanDeny && quotaDescs > 0 && quotaSent == 0 {
		rejectedByCache = true
	}
	p.slots, p.items, p.rejectedByCache = slots, items, rejectedByCache
	if len(items) == 0 || rejectedByCache {
		return false
	}
	p.results = p.resBuf[:0]
	for range items {
		p.results = append(p.results, limiter.Result{})
	}
	return true
}

// finish builds the answer from the backend's results (or its error).
func (s *Service) finish(p *pending, backendErr error) (*rlsv3.RateLimitResponse, error) {
	defer func() { s.m.latency.Observe(time.Since(p.start).Seconds()) }()
	if p.answered {
		if p.err != nil {
			return nil, p.err
		}
		return p.resp, nil
	}
	if backendErr != nil {
		if errors.Is(backendErr, context.Canceled) || errors.Is(backendErr, context.DeadlineExceeded) {
			// The caller gave up (deadline, disconnect): no answer is read,
			// and it is no backend failure to log or count as one.
			s.m.code("canceled").Inc()
			return nil, status.FromContextError(backendErr).Err()
		}
		return s.failed(p.req, p.resp, p.slots, backendErr)
	}
	slots, items, results, nowUS := p.slots, p.items, p.results, p.nowUS
	for i := range slots {
		sl := &slots[i]
		if sl.item >= 0 && results != nil {
			sl.res = results[sl.item]
			if s.o.LocalCache != nil && sl.res.Remaining == 0 && sl.res.RetryAfter > 0 {
				s.o.LocalCache.Put(items[sl.item].Key, nowUS+sl.res.RetryAfter.Microseconds(), nowUS)
			}
		}
	}
	s.answer(p.req, p.resp, slots, p.rejectedByCache)
	return p.resp, nil
}

func hasOverride(descs []*rlcommon.RateLimitDescriptor) bool {
	for _, d := range descs {
		if d.GetLimit() != nil {
			return true
		}
	}
	return false
}

// overrideLimit turns Envoy's per-descriptor limit override into a fixed
// window limit. Its metric label is "override" (bounded), never the values.
func overrideLimit(o *rlcommon.RateLimitDescriptor_RateLimitOverride) *rules.RateLimit {
	u := rlsv3.RateLimitResponse_RateLimit_Unit(o.GetUnit())
	return &rules.RateLimit{
		Unit: u, RequestsPerUnit: o.GetRequestsPerUnit(), Path: "override",
		Proto: &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: o.GetRequestsPerUnit(), Unit: u},
	}
}

// ruleCounters returns the metric handles for one matched descriptor: the
// rule path, or a label with request values (detailed_metric,
// value_to_metric), bounded per rule.
func (s *Service) ruleCounters(domain string, l *rules.RateLimit, es []*rlcommon.RateLimitDescriptor_Entry) *ruleCounters {
	label, values := l.MetricLabel(es, l.DetailedMetric)
	if !values {
		return s.m.rule(domain, label)
	}
	return s.m.valueRule(domain, l.Path, label)
}

// answer fills the statuses and the overall code. As envoyproxy/ratelimit:
// the request is OVER_LIMIT when an enforced (not shadow, not quota)
// descriptor is over, or when it has quota descriptors and all of them are
// over; an over quota descriptor still reports OVER_LIMIT in its own status.
// With the global quota mode every descriptor but unlimited ones is a quota
// descriptor, even one no rule matched (it passes).
func (s *Service) answer(req *rlsv3.RateLimitRequest, resp *rlsv3.RateLimitResponse, slots []slot, rejected bool) {
	var hdr *slot
	over := rejected
	quotaTotal, quotaOver := 0, 0
	for i := range slots {
		sl := &slots[i]
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		resp.Statuses[i] = st
		l := sl.limit
		if l == nil {
			if s.o.QuotaMode {
				quotaTotal++
			}
			continue
		}
		h := float64(sl.hits)
		sl.counter.total.Add(h)
		if l.Unlimited {
			st.LimitRemaining = math.MaxUint32
			sl.counter.within.Add(h)
			continue
		}
		if sl.quota {
			quotaTotal++
		}
		st.CurrentLimit = l.Proto
		st.LimitRemaining = sl.res.Remaining
		if reset := resetOf(sl); reset > 0 {
			st.DurationUntilReset = durationpb.New(reset.Round(time.Millisecond))
		}
		switch {
		case sl.res.Over && l.ShadowMode:
			sl.counter.shadow.Add(h)
		case sl.res.Over:
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			if sl.quota {
				quotaOver++
			} else {
				over = true
			}
			sl.counter.over.Add(h)
			if sl.cached {
				sl.counter.localCache.Add(h)
			}
		default:
			sl.counter.within.Add(h)
			if float64(l.RequestsPerUnit-min(sl.res.Remaining, l.RequestsPerUnit)) >= s.o.NearLimitRatio*float64(l.RequestsPerUnit) {
				sl.counter.near.Add(h)
			}
		}
		if hdr == nil || betterHeader(sl, hdr) {
			hdr = sl
		}
	}
	if quotaTotal > 0 && quotaOver == quotaTotal {
		over = true
	}
	code := "ok"
	if over {
		resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		code = "over_limit"
	}
	s.m.code(code).Inc()
	if s.o.ResponseHeaders && hdr != nil {
		resp.ResponseHeadersToAdd = headers(hdr, over)
	}
	if s.o.DynamicMetadata {
		resp.DynamicMetadata = dynamicMetadata(req, slots, resp.Statuses)
	}
}

// betterHeader picks the descriptor the RateLimit-* headers describe: an
// enforced over-limit one first (not shadow, not quota, as the anchor), then
// the one with the least remaining.
func betterHeader(a, b *slot) bool {
	ao := a.res.Over && !a.limit.ShadowMode && !a.quota
	bo := b.res.Over && !b.limit.ShadowMode && !b.quota
	if ao != bo {
		return ao
	}
	return a.res.Remaining < b.res.Remaining
}

func resetOf(sl *slot) time.Duration {
	if sl.cached {
		return sl.res.RetryAfter
	}
	return sl.res.ResetAfter
}

func headers(sl *slot, over bool) []*corev3.HeaderValue {
	reset := resetOf(sl)
	h := []*corev3.HeaderValue{
		{Key: "RateLimit-Limit", Value: strconv.FormatUint(uint64(sl.limit.RequestsPerUnit), 10)},
		{Key: "RateLimit-Remaining", Value: strconv.FormatUint(uint64(sl.res.Remaining), 10)},
		{Key: "RateLimit-Reset", Value: strconv.FormatInt(ceilSeconds(reset), 10)},
	}
	if over {
		retry := sl.res.RetryAfter
		if retry <= 0 {
			retry = reset
		}
		h = append(h, &corev3.HeaderValue{Key: "Retry-After", Value: strconv.FormatInt(ceilSeconds(retry), 10)})
	}
	return h
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// failed answers by the failure mode, and logs at most once a second.
func (s *Service) failed(req *rlsv3.RateLimitRequest, resp *rlsv3.RateLimitResponse, slots []slot, err error) (*rlsv3.RateLimitResponse, error) {
	now := time.Now().Unix()
	if last := s.lastLog.Load(); last != now && s.lastLog.CompareAndSwap(last, now) {
		s.o.Log.Warn("rate-limit backend failed; answering by failure mode", "err", err, "failure_mode", map[FailureMode]string{FailAllow: "allow", FailDeny: "deny"}[s.o.FailureMode])
	}
	code := rlsv3.RateLimitResponse_OK
	mode := "allow"
	if s.o.FailureMode == FailDeny {
		code, mode = rlsv3.RateLimitResponse_OVER_LIMIT, "deny"
	}
	resp.OverallCode = code
	for i := range slots {
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		if slots[i].limit != nil && !slots[i].limit.Unlimited && !slots[i].limit.ShadowMode {
			st.Code = code
			st.CurrentLimit = slots[i].limit.Proto
		}
		resp.Statuses[i] = st
	}
	if s.o.DynamicMetadata {
		resp.DynamicMetadata = dynamicMetadata(req, slots, resp.Statuses)
	}
	s.m.failures.WithLabelValues(mode).Inc()
	s.m.code("failure_" + mode).Inc()
	return resp, nil
}
