// Package rules holds rate-limit rules in envoyproxy/ratelimit's YAML format
// (domain → nested descriptors → rate_limit) and matches request descriptors
// against them.
package rules

import (
	"strings"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
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
	Burst          uint32
	Replaces       []string
	ShadowMode     bool
	DetailedMetric bool
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

type entryKey struct{ key, value string }

type node struct {
	// children by exact (key, value); a bare key is stored with value "".
	children map[entryKey]*node
	// wildcards are children whose value ends in '*', in file order.
	wildcards []wildcard
	limit     *RateLimit
}

type wildcard struct {
	key, prefix string
	n           *node
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
// first wildcard child whose value prefix matches, then the bare key; the
// limit applies only when the request has exactly as many entries as the
// matched rule is deep. Keys and values are compared as separate strings, so
// request key "a_b" never matches a rule for key "a" with value "b".
func (c *Config) Match(domain string, entries []*rlcommon.RateLimitDescriptor_Entry) *RateLimit {
	if c == nil {
		return nil
	}
	n := c.domains[domain]
	if n == nil {
		return nil
	}
	for i, e := range entries {
		next := n.children[entryKey{e.GetKey(), e.GetValue()}]
		if next == nil {
			for _, w := range n.wildcards {
				if w.key == e.GetKey() && strings.HasPrefix(e.GetValue(), w.prefix) {
					next = w.n
					break
				}
			}
		}
		if next == nil {
			next = n.children[entryKey{e.GetKey(), ""}]
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
