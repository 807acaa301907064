// Package rules holds rate-limit rules in envoyproxy/ratelimit's YAML format
// (domain → nested descriptors → rate_limit) and matches request descriptors
// against them.
package rules

import (
	"strings"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Algorithm is how a limit counts.
type Algorithm uint8

// Algorithms. FixedWindow is the default and the only one envoyproxy/ratelimit has.
const (
	FixedWindow Algorithm = iota
	SlidingWindow
	TokenBucket
)

var algorithmNames = map[string]Algorithm{
	"fixed_window":   FixedWindow,
	"sliding_window": SlidingWindow,
	"token_bucket":   TokenBucket,
}

func (a Algorithm) String() string {
	for n, v := range algorithmNames {
		if v == a {
			return n
		}
	}
	return "unknown"
}

// UnitDuration is the length of a unit. Month and year are fixed 30 and 365
// days, as in envoyproxy/ratelimit.
func UnitDuration(u rlsv3.RateLimitResponse_RateLimit_Unit) time.Duration {
	switch u {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return time.Second
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return time.Minute
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return time.Hour
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_WEEK:
		return 7 * 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 30 * 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 365 * 24 * time.Hour
	}
	return 0
}

// RateLimit is one configured limit (a descriptor's rate_limit block).
type RateLimit struct {
	Name            string
	Unit            rlsv3.RateLimitResponse_RateLimit_Unit
	RequestsPerUnit uint32
	Unlimited       bool
	Algorithm       Algorithm
	// Burst is the token-bucket capacity; 0 means RequestsPerUnit.
	Burst      uint32
	Replaces   []string
	ShadowMode bool
	// QuotaMode (descriptor quota_mode): over limit does not deny the
	// request unless every quota-mode descriptor of the request is over.
	QuotaMode      bool
	DetailedMetric bool
	// Metadata is the descriptor's metadata block, returned in the
	// response's dynamic_metadata when the descriptor passes (shared,
	// read-only).
	Metadata *structpb.Struct
	// Levels describes how each request entry reaches this limit, one per
	// entry from the root (a limit applies only at exactly this depth).
	Levels []Level
	// SharedKey: some level is a share_threshold wildcard, so the counter
	// key uses the pattern instead of the request value there.
	SharedKey bool
	// ValueLabel: some level has value_to_metric, so the metric label
	// carries request values (bounded by the service).
	ValueLabel bool
	// Path is the rule's position in its domain, e.g. "user" or
	// "remote_address.path_/api*": bounded by the rule files, so it is the
	// metric label (never raw request values unless DetailedMetric).
	Path string
	// Source is file:line of the rate_limit block, for logs.
	Source string
	// Proto is the current_limit reported to Envoy (shared, read-only).
	Proto *rlsv3.RateLimitResponse_RateLimit
}

// Capacity is the token-bucket burst (or the per-unit limit).
func (r *RateLimit) Capacity() uint32 {
	if r.Burst > 0 {
		return r.Burst
	}
	return r.RequestsPerUnit
}

// Config is an immutable set of domains.
type Config struct {
	domains map[string]*node
	// Files lists the loaded files, for logs and the admin page.
	Files []string
}

// LevelKind is how a rule level matches a request entry.
type LevelKind uint8

// Level kinds: an exact value, a value with '*' wildcards, or a bare key
// (any value).
const (
	LevelExact LevelKind = iota
	LevelWildcard
	LevelBare
)

// Level is one rule level on the path to a limit.
type Level struct {
	Kind LevelKind
	Key  string
	// Value is the exact value or the wildcard pattern ("" for a bare key).
	Value string
	// ValueToMetric puts the request's value into the metric label
	// (value_to_metric).
	ValueToMetric bool
	// Share (share_threshold on a wildcard): every value matching the
	// pattern shares one counter, keyed by the pattern.
	Share bool
}

type entryKey struct{ key, value string }

type node struct {
	// children by exact (key, value); a bare key is stored with value "".
	// Wildcard children are here too, under their pattern, so a request
	// value equal to the pattern finds its own rule first (as the anchor).
	children map[entryKey]*node
	// wildcards are children whose value contains '*', in file order.
	wildcards []wildcard
	limit     *RateLimit
	// file and line define the descriptor, for load errors (a merged
	// domain's top-level descriptors come from several files).
	file string
	line int
}

type wildcard struct {
	key string
	// parts is the pattern split at '*' (at least two parts).
	parts []string
	n     *node
}

func newNode() *node { return &node{children: map[entryKey]*node{}} }

// HasDomain reports whether domain has rules.
func (c *Config) HasDomain(domain string) bool {
	_, ok := c.domains[domain]
	return ok
}

// Domains lists the configured domains.
func (c *Config) Domains() []string {
	out := make([]string, 0, len(c.domains))
	for d := range c.domains {
		out = append(out, d)
	}
	return out
}

// Match finds the limit for one request descriptor, with the same rules as
// envoyproxy/ratelimit: per level an exact key+value child wins, then the
// first wildcard child (file order) whose pattern matches the value, then
// the bare key; the limit applies only when the request has exactly as many
// entries as the matched rule is deep. Keys and values are compared as
// separate strings, so request key "a_b" never matches a rule for key "a"
// with value "b".
func (c *Config) Match(domain string, entries []*rlcommon.RateLimitDescriptor_Entry) *RateLimit {
	if c == nil {
		return nil
	}
	n := c.domains[domain]
	if n == nil {
		return nil
	}
	for i, e := range entries {
		k, v := e.GetKey(), e.GetValue()
		var next *node
		if v != "" {
			next = n.children[entryKey{k, v}]
		}
		if next == nil {
			for _, w := range n.wildcards {
				if w.key == k && globMatch(w.parts, v) {
					next = w.n
					break
				}
			}
		}
		if next == nil {
			next = n.children[entryKey{k, ""}]
		}
		if next == nil {
			return nil
		}
		if i == len(entries)-1 {
			return next.limit
		}
		n = next
	}
	return nil
}

// globMatch reports whether s matches a pattern split at its '*'s: s starts
// with the first part, ends with the last, and holds the middle parts in
// order in between, without overlaps; '*' matches any run, even empty. The
// leftmost placement of each middle part is always a valid one, so no
// backtracking is needed.
func globMatch(parts []string, s string) bool {
	first, last := parts[0], parts[len(parts)-1]
	if len(s) < len(first)+len(last) || !strings.HasPrefix(s, first) || !strings.HasSuffix(s, last) {
		return false
	}
	mid := s[len(first) : len(s)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(mid, p)
		if i < 0 {
			return false
		}
		mid = mid[i+len(p):]
	}
	return true
}

// IsWildcard reports whether a rule value is a wildcard pattern: any '*',
// anywhere, any number of them (envoyproxy/ratelimit since 2026).
func IsWildcard(value string) bool { return strings.Contains(value, "*") }

// KeyValues returns the (key, value) pairs that name this limit's counter
// for the request entries: the request's own values, except at a
// share_threshold wildcard level, where the pattern stands for every value
// it matches (one shared counter). es must be the entries Match matched.
func (r *RateLimit) KeyValues(es []*rlcommon.RateLimitDescriptor_Entry) []string {
	kv := make([]string, 0, 2*len(es))
	for i, e := range es {
		v := e.GetValue()
		if r.SharedKey && i < len(r.Levels) && r.Levels[i].Share {
			v = r.Levels[i].Value
		}
		kv = append(kv, e.GetKey(), v)
	}
	return kv
}

// MetricLabel returns the rule label for the request entries, as
// envoyproxy/ratelimit builds its stats key (without the domain):
//   - detailed: key_value for every entry (the pattern at share_threshold
//     levels);
//   - otherwise Path, except at value_to_metric levels, where a bare key
//     gets the request's value appended and a wildcard is replaced by the
//     request's value (share_threshold keeps the pattern).
//
// The second result reports whether the label carries request values (the
// caller bounds those).
func (r *RateLimit) MetricLabel(es []*rlcommon.RateLimitDescriptor_Entry, detailed bool) (string, bool) {
	if !detailed && !r.ValueLabel {
		return r.Path, false
	}
	b := make([]byte, 0, 64)
	for i, e := range es {
		if i > 0 {
			b = append(b, '.')
		}
		b = append(b, e.GetKey()...)
		v := e.GetValue()
		if i < len(r.Levels) {
			l := r.Levels[i]
			switch {
			case l.Share:
				v = l.Value
			case detailed:
			case l.Kind == LevelExact:
				v = l.Value
			case l.Kind == LevelWildcard && !l.ValueToMetric:
				v = l.Value
			case l.Kind == LevelBare && !l.ValueToMetric:
				v = ""
			}
		}
		if v != "" {
			b = append(b, '_')
			b = append(b, v...)
		}
	}
	return string(b), true
}
