// Package localratelimit is Envoy's envoy.filters.http.local_ratelimit for
// the sidemesh proxy: a token bucket per filter instance (the proxy core
// builds one per route or virtual host that carries the config), checked
// before the global RLS so a burst is shed without a network call.
package localratelimit

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/sidemesh/sidemesh/proxy/internal/pct"
)

// Envoy refuses faster refills.
const minFillInterval = 50 * time.Millisecond

// Bucket is a token bucket refilled in whole fills, as Envoy's: every
// fill_interval adds tokens_per_fill, up to max_tokens; it starts full.
type Bucket struct {
	max, perFill uint64
	fill         time.Duration
	now          func() time.Time

	mu     sync.Mutex
	tokens uint64
	last   time.Time
}

// NewBucket returns a full bucket.
func NewBucket(maxTokens, perFill uint64, fill time.Duration, now func() time.Time) *Bucket {
	if now == nil {
		now = time.Now
	}
	return &Bucket{max: maxTokens, perFill: perFill, fill: fill, now: now, tokens: maxTokens, last: now()}
}

// Take consumes one token if there is one. remaining is what is left and
// reset the time until the next fill.
func (b *Bucket) Take() (ok bool, remaining uint64, reset time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if n := now.Sub(b.last) / b.fill; n > 0 {
		b.tokens = min(b.max, b.tokens+uint64(n)*b.perFill)
		b.last = b.last.Add(n * b.fill)
	}
	reset = b.fill - now.Sub(b.last)
	if b.tokens == 0 {
		return false, 0, reset
	}
	b.tokens--
	return true, b.tokens, reset
}

// Stats are Envoy's local rate limit counters.
type Stats struct {
	Enabled, Enforced, RateLimited, OK uint64
}

// Filter is one local rate limit config with its bucket.
type Filter struct {
	bucket              *Bucket
	enabled, enforced   *typev3.FractionalPercent
	status              int
	respHeaders         []*corev3.HeaderValueOption
	reqHeadersNotForced []*corev3.HeaderValueOption
	xHeaders            bool
	asExhausted         bool
	maxTokens           uint64

	enabledN, enforcedN, limitedN, okN atomic.Uint64
}

// New validates cfg. A config without token_bucket yields a nil Filter and
// no error: Envoy treats it as "no local limit here".
func New(cfg *localv3.LocalRateLimit, now func() time.Time) (*Filter, error) {
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("local_ratelimit: %w", err)
	}
	if len(cfg.GetDescriptors()) > 0 || cfg.GetLocalRateLimitPerDownstreamConnection() || cfg.GetLocalClusterRateLimit() != nil || len(cfg.GetRateLimits()) > 0 {
		return nil, fmt.Errorf("local_ratelimit %s: descriptors, rate_limits, per-connection and cluster-wide limits are not supported", cfg.GetStatPrefix())
	}
	tb := cfg.GetTokenBucket()
	if tb == nil {
		return nil, nil
	}
	fill := tb.GetFillInterval().AsDuration()
	if fill < minFillInterval {
		return nil, fmt.Errorf("local_ratelimit %s: token_bucket.fill_interval %v is below the minimum of %v", cfg.GetStatPrefix(), fill, minFillInterval)
	}
	perFill := uint64(1)
	if v := tb.GetTokensPerFill(); v != nil {
		perFill = uint64(v.GetValue())
	}
	f := &Filter{
		bucket:  NewBucket(uint64(tb.GetMaxTokens()), perFill, fill, now),
		enabled: cfg.GetFilterEnabled().GetDefaultValue(), enforced: cfg.GetFilterEnforced().GetDefaultValue(),
		status: http.StatusTooManyRequests, respHeaders: cfg.GetResponseHeadersToAdd(),
		reqHeadersNotForced: cfg.GetRequestHeadersToAddWhenNotEnforced(),
		xHeaders:            cfg.GetEnableXRatelimitHeaders() == ratelimitcommonv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		asExhausted:         cfg.GetRateLimitedAsResourceExhausted(),
		maxTokens:           uint64(tb.GetMaxTokens()),
	}
	if s := cfg.GetStatus(); s != nil && s.GetCode() >= 400 {
		f.status = int(s.GetCode())
	}
	return f, nil
}

// Stats returns the counters.
func (f *Filter) Stats() Stats {
	return Stats{Enabled: f.enabledN.Load(), Enforced: f.enforcedN.Load(), RateLimited: f.limitedN.Load(), OK: f.okN.Load()}
}

func setHeaders(h http.Header, opts []*corev3.HeaderValueOption) {
	for _, o := range opts {
		k, v := o.GetHeader().GetKey(), o.GetHeader().GetValue()
		if o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD && (o.GetAppend() == nil || o.GetAppend().GetValue()) {
			h.Add(k, v)
		} else {
			h.Set(k, v)
		}
	}
}

// Handler applies the limit in front of next. A nil Filter passes through.
func (f *Filter) Handler(next http.Handler) http.Handler {
	if f == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !pct.Sample(f.enabled) {
			next.ServeHTTP(w, r)
			return
		}
		f.enabledN.Add(1)
		ok, remaining, reset := f.bucket.Take()
		if f.xHeaders {
			w.Header().Set("X-RateLimit-Limit", strconv.FormatUint(f.maxTokens, 10))
			w.Header().Set("X-RateLimit-Remaining", strconv.FormatUint(remaining, 10))
			w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(int64((reset+time.Second-1)/time.Second), 10))
		}
		if ok {
			f.okN.Add(1)
			next.ServeHTTP(w, r)
			return
		}
		f.limitedN.Add(1)
		if !pct.Sample(f.enforced) {
			setHeaders(r.Header, f.reqHeadersNotForced)
			next.ServeHTTP(w, r)
			return
		}
		f.enforcedN.Add(1)
		setHeaders(w.Header(), f.respHeaders)
		w.Header().Set("X-Envoy-Ratelimited", "true")
		if len(r.Header.Get("Content-Type")) >= 16 && r.Header.Get("Content-Type")[:16] == "application/grpc" {
			code := "14" // UNAVAILABLE, Envoy's mapping of 429
			if f.asExhausted {
				code = "8"
			}
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", code)
			w.Header().Set("Grpc-Message", "local_rate_limited")
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(f.status)
		_, _ = w.Write([]byte("local_rate_limited"))
	})
}
