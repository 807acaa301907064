// Package limiter defines how one ShouldRateLimit request is counted: the
// items (one per limited descriptor), the three algorithms' exact semantics,
// unambiguous counter keys, and the embedded memory backend. The Redis backend
// implements the same semantics in Lua.
//
// The request-level rule every backend follows (see Rejected): all items are
// checked atomically; if any Enforced item does not fit, or the request has
// QuotaMember items and none of them fits, the request is rejected and no
// item is charged; otherwise every item that fits is charged (an item that
// does not fit is reported over limit and not charged).
package limiter

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"

	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// Item is one descriptor to count.
type Item struct {
	// Key is the counter's base key (see Key); window suffixes are added by
	// the backend.
	Key       string
	Algorithm rules.Algorithm
	Unit      time.Duration
	Limit     uint32
	// Burst is the token-bucket capacity (0: Limit).
	Burst uint32
	Hits  uint32
	// Enforce says how the item's outcome decides the request.
	Enforce Enforcement
}

// Enforcement is an item's part in the request's decision. The values are
// the script's wire values (script.lua).
type Enforcement uint8

const (
	// CountOnly items are counted and reported but never reject the
	// request: shadow-mode limits, and quota descriptors whose group cannot
	// deny (another quota descriptor of the request always passes).
	CountOnly Enforcement = iota
	// Enforced items reject the request when they do not fit.
	Enforced
	// QuotaMember items form the request's quota group: the request is
	// rejected when it has at least one and none of them fits.
	QuotaMember
)

// Rejected is the request-level rule, from results[i].Over for items[i]:
// an Enforced item over, or QuotaMember items that are all over. Every
// backend decides exactly like this (the Lua script mirrors it).
func Rejected(items []Item, results []Result) bool {
	quota, quotaFits := false, false
	for i := range items {
		switch items[i].Enforce {
		case Enforced:
			if results[i].Over {
				return true
			}
		case QuotaMember:
			quota = true
			if !results[i].Over {
				quotaFits = true
			}
		}
	}
	return quota && !quotaFits
}

// Result is one item's outcome.
type Result struct {
	Over bool
	// Charged reports whether the hits were added to the counter.
	Charged   bool
	Remaining uint32
	// ResetAfter is duration_until_reset: fixed/sliding window: until the
	// current window ends; token bucket: until the bucket is full again.
	ResetAfter time.Duration
	// RetryAfter, when > 0, is how long until a 1-hit request could fit
	// (set when Remaining is 0): the local over-limit cache and Retry-After
	// use it.
	RetryAfter time.Duration
}

// Backend counts items. Check fills results[i] for items[i].
type Backend interface {
	Check(ctx context.Context, now time.Time, items []Item, results []Result) error
}

// Request is one request's items for BatchBackend: Results gets one entry
// per item, Err the request's failure.
type Request struct {
	Now     time.Time
	Items   []Item
	Results []Result
	Err     error
}

// BatchBackend is a Backend that can take many requests at once (each
// still atomic on its own), so a batch of calls costs one hand-off and one
// wait instead of one per request.
type BatchBackend interface {
	Backend
	CheckBatch(ctx context.Context, reqs []Request)
}

// ErrUnavailable wraps backend failures (timeouts, connection errors, open
// circuit breaker): the service applies its failure mode.
var ErrUnavailable = errors.New("rate-limit backend unavailable")

// Key builds an unambiguous counter key: every part is length-prefixed, so
// entries ("a_b","c") and ("a","b_c") never share a counter. The algorithm
// and unit are part of the key so a rule change never reinterprets an old
// counter. The whole base key is a Redis Cluster hash tag ({...}): the
// windows of one descriptor live in one slot.
func Key(prefix string, alg rules.Algorithm, unit time.Duration, domain string, kv ...string) string {
	n := len(prefix) + len(domain) + 16
	for _, s := range kv {
		n += len(s) + 4
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	b = append(b, prefix...)
	b = append(b, "fst"[alg])
	b = strconv.AppendInt(b, int64(unit/time.Second), 10)
	b = append(b, '|')
	b = appendPart(b, domain)
	for _, s := range kv {
		b = appendPart(b, s)
	}
	b = append(b, '}')
	return string(b)
}

func appendPart(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// WindowStart is the start of the fixed window containing now, aligned to the
// Unix epoch like envoyproxy/ratelimit (floor(now/unit)*unit, in seconds).
func WindowStart(now time.Time, unit time.Duration) int64 {
	u := int64(unit / time.Second)
	s := now.Unix()
	return s - s%u
}

// WindowKey is the key of one fixed window.
func WindowKey(base string, start int64) string {
	return base + ":" + strconv.FormatInt(start, 10)
}

// State is what a backend reads for one item before deciding: fixed window:
// A = count in the current window; sliding window: A = previous window's
// count, B = current window's; token bucket: A = theoretical arrival time in
// µs since the epoch (0 when absent).
type State struct{ A, B int64 }

// Fits decides whether hits fit, from the state read before charging.
// Backends must decide exactly like this (the Lua script mirrors it).
func Fits(it *Item, s State, nowUS int64) bool {
	h := int64(it.Hits)
	L := int64(it.Limit)
	switch it.Algorithm {
	case rules.SlidingWindow:
		return SlidingEstimate(s, it.Unit, nowUS)+float64(h) <= float64(L)
	case rules.TokenBucket:
		if L == 0 {
			return false
		}
		t, tau := Emission(it)
		tat := max(s.A, nowUS)
		return tat+h*t-nowUS <= tau
	default:
		return s.A+h <= L
	}
}

// SlidingEstimate is previous*(unit-elapsed)/unit + current: the previous
// window's count weighted by how much of it still overlaps the sliding
// window ending now.
func SlidingEstimate(s State, unit time.Duration, nowUS int64) float64 {
	u := unit.Microseconds()
	e := nowUS % u
	return float64(s.A)*(float64(u-e)/float64(u)) + float64(s.B)
}

// Emission is the token bucket's emission interval T = ceil(unit/limit) and
// tolerance tau = capacity*T, in µs (GCRA). Rounding T up never admits more
// than the configured rate.
func Emission(it *Item) (t, tau int64) {
	if it.Limit == 0 {
		return 0, 0
	}
	u := it.Unit.Microseconds()
	t = (u + int64(it.Limit) - 1) / int64(it.Limit)
	c := it.Burst
	if c == 0 {
		c = it.Limit
	}
	return t, int64(c) * t
}

// Outcome computes an item's Result from the state read before the decision,
// whether it was over, and whether it was charged.
func Outcome(it *Item, s State, over, charged bool, nowUS int64) Result {
	r := Result{Over: over, Charged: charged}
	h := int64(it.Hits)
	if !charged {
		h = 0
	}
	L := int64(it.Limit)
	u := it.Unit.Microseconds()
	switch it.Algorithm {
	case rules.SlidingWindow:
		e := nowUS % u
		r.ResetAfter = usDur(u - e)
		est := SlidingEstimate(s, it.Unit, nowUS) + float64(h)
		r.Remaining = clampU32(int64(math.Floor(float64(L) - est)))
		if r.Remaining == 0 {
			r.RetryAfter = slidingRetry(s.A, s.B+h, L, u, e)
		}
	case rules.TokenBucket:
		t, tau := Emission(it)
		tat := max(s.A, nowUS) + h*t
		r.ResetAfter = usDur(tat - nowUS)
		if t > 0 {
			r.Remaining = clampU32((tau - (tat - nowUS)) / t)
		}
		if r.Remaining == 0 {
			r.RetryAfter = usDur(max(tat+t-tau-nowUS, 1))
			if L == 0 {
				r.RetryAfter = 0
			}
		}
	default:
		// Units are whole seconds, so this is the same epoch-aligned window as
		// WindowStart.
		end := (nowUS/u + 1) * u
		r.ResetAfter = usDur(end - nowUS)
		r.Remaining = clampU32(L - s.A - h)
		if r.Remaining == 0 && L > 0 {
			r.RetryAfter = r.ResetAfter
		}
	}
	return r
}

// slidingRetry finds how long until prev*(u-e')/u + cur + 1 <= L, where the
// window may roll over (cur becomes prev). 0 means "not within two windows".
func slidingRetry(prev, cur, L, u, e int64) time.Duration {
	if L == 0 {
		return 0
	}
	room := float64(L - 1 - cur)
	if room >= 0 {
		if prev == 0 {
			return time.Microsecond
		}
		// prev*(u-e-t)/u <= room  →  t >= (u-e) - room*u/prev
		t := float64(u-e) - room*float64(u)/float64(prev)
		return usDur(max(int64(math.Ceil(t)), 1))
	}
	// Next window: cur*(u-e2)/u + 1 <= L  →  e2 >= u - (L-1)*u/cur
	e2 := float64(u) - float64(L-1)*float64(u)/float64(cur)
	return usDur(u - e + max(int64(math.Ceil(e2)), 0))
}

func usDur(us int64) time.Duration { return time.Duration(us) * time.Microsecond }

func clampU32(v int64) uint32 {
	if v < 0 {
		return 0
	}
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}
