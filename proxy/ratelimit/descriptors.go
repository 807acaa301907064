package ratelimit

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/sidemesh/sidemesh/proxy/internal/strmatch"
)

// Policy is a compiled list of envoy.config.route.v3.RateLimit entries (a
// route's or a virtual host's rate_limits). Compile it once per config
// version; Descriptors is then allocation-light and lock-free.
type Policy struct {
	entries []entry
	// anyStage: the filter-level rate_limits, where Envoy ignores stage.
	anyStage bool
}

type entry struct {
	stage   uint32
	actions []action
}

// RequestAttrs is what actions read besides the request headers.
type RequestAttrs struct {
	// RemoteAddr is the downstream peer (ip or ip:port).
	RemoteAddr string
	// LocalCluster is this proxy's service cluster (source_cluster).
	LocalCluster string
	// DestinationCluster is the route's target cluster.
	DestinationCluster string
}

// action produces one descriptor entry. ok=false means the whole
// rate_limits entry yields no descriptor; key=="" with ok=true means this
// action adds nothing (skip_if_absent).
type action func(h http.Header, a *RequestAttrs) (key, value string, ok bool)

// Compile validates and compiles rate limit entries. Unsupported actions
// are an error naming the entry and action, so the config is NACKed
// rather than silently ignored.
func Compile(limits []*routev3.RateLimit) (*Policy, error) {
	p := &Policy{}
	for i, rl := range limits {
		if err := rl.ValidateAll(); err != nil {
			return nil, fmt.Errorf("rate_limits[%d]: %w", i, err)
		}
		e := entry{stage: rl.GetStage().GetValue()}
		for j, a := range rl.GetActions() {
			f, err := compileAction(a)
			if err != nil {
				return nil, fmt.Errorf("rate_limits[%d].actions[%d]: %w", i, j, err)
			}
			e.actions = append(e.actions, f)
		}
		p.entries = append(p.entries, e)
	}
	return p, nil
}

func compileAction(a *routev3.RateLimit_Action) (action, error) {
	switch v := a.GetActionSpecifier().(type) {
	case *routev3.RateLimit_Action_SourceCluster_:
		return func(_ http.Header, a *RequestAttrs) (string, string, bool) {
			return "source_cluster", a.LocalCluster, true
		}, nil
	case *routev3.RateLimit_Action_DestinationCluster_:
		return func(_ http.Header, a *RequestAttrs) (string, string, bool) {
			return "destination_cluster", a.DestinationCluster, true
		}, nil
	case *routev3.RateLimit_Action_RequestHeaders_:
		name := http.CanonicalHeaderKey(v.RequestHeaders.GetHeaderName())
		key, skip := v.RequestHeaders.GetDescriptorKey(), v.RequestHeaders.GetSkipIfAbsent()
		return func(h http.Header, _ *RequestAttrs) (string, string, bool) {
			vals := h[name]
			if len(vals) == 0 || vals[0] == "" {
				return "", "", skip
			}
			return key, vals[0], true
		}, nil
	case *routev3.RateLimit_Action_RemoteAddress_:
		return func(_ http.Header, a *RequestAttrs) (string, string, bool) {
			ip, ok := remoteIP(a.RemoteAddr)
			if !ok {
				return "", "", false
			}
			return "remote_address", ip.String(), true
		}, nil
	case *routev3.RateLimit_Action_MaskedRemoteAddress_:
		v4, v6 := 32, 128
		if m := v.MaskedRemoteAddress.GetV4PrefixMaskLen(); m != nil {
			v4 = int(m.GetValue())
		}
		if m := v.MaskedRemoteAddress.GetV6PrefixMaskLen(); m != nil {
			v6 = int(m.GetValue())
		}
		return func(_ http.Header, a *RequestAttrs) (string, string, bool) {
			ip, ok := remoteIP(a.RemoteAddr)
			if !ok {
				return "", "", false
			}
			bits := v6
			if ip.Is4() {
				bits = v4
			}
			pfx, err := ip.Prefix(bits)
			if err != nil {
				return "", "", false
			}
			return "masked_remote_address", pfx.String(), true
		}, nil
	case *routev3.RateLimit_Action_GenericKey_:
		key := v.GenericKey.GetDescriptorKey()
		if key == "" {
			key = "generic_key"
		}
		val := v.GenericKey.GetDescriptorValue()
		return func(http.Header, *RequestAttrs) (string, string, bool) { return key, val, true }, nil
	case *routev3.RateLimit_Action_HeaderValueMatch_:
		key := v.HeaderValueMatch.GetDescriptorKey()
		if key == "" {
			key = "header_match"
		}
		val := v.HeaderValueMatch.GetDescriptorValue()
		expect := v.HeaderValueMatch.GetExpectMatch() == nil || v.HeaderValueMatch.GetExpectMatch().GetValue()
		var ms []headerMatcher
		for i, hm := range v.HeaderValueMatch.GetHeaders() {
			m, err := compileHeaderMatcher(hm)
			if err != nil {
				return nil, fmt.Errorf("header_value_match.headers[%d]: %w", i, err)
			}
			ms = append(ms, m)
		}
		return func(h http.Header, _ *RequestAttrs) (string, string, bool) {
			all := true
			for _, m := range ms {
				if !m(h) {
					all = false
					break
				}
			}
			if all != expect {
				return "", "", false
			}
			return key, val, true
		}, nil
	}
	return nil, fmt.Errorf("action %T is not supported (supported: source_cluster, destination_cluster, request_headers, remote_address, masked_remote_address, generic_key, header_value_match)", a.GetActionSpecifier())
}

func remoteIP(addr string) (netip.Addr, bool) {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

type headerMatcher func(http.Header) bool

// compileHeaderMatcher covers the HeaderMatcher forms rate limit configs
// use: string_match (and its deprecated spellings), present_match,
// range_match, invert_match, treat_missing_header_as_empty.
func compileHeaderMatcher(hm *routev3.HeaderMatcher) (headerMatcher, error) {
	name := http.CanonicalHeaderKey(hm.GetName())
	var match func(v string, present bool) bool
	valueMatch := func(f func(string) bool) func(string, bool) bool {
		return func(v string, present bool) bool { return present && f(v) }
	}
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case nil:
		match = func(_ string, present bool) bool { return present }
	case *routev3.HeaderMatcher_PresentMatch:
		want := s.PresentMatch
		match = func(_ string, present bool) bool { return present == want }
	case *routev3.HeaderMatcher_ExactMatch:
		match = valueMatch(func(v string) bool { return v == s.ExactMatch })
	case *routev3.HeaderMatcher_PrefixMatch:
		match = valueMatch(func(v string) bool { return strings.HasPrefix(v, s.PrefixMatch) })
	case *routev3.HeaderMatcher_SuffixMatch:
		match = valueMatch(func(v string) bool { return strings.HasSuffix(v, s.SuffixMatch) })
	case *routev3.HeaderMatcher_ContainsMatch:
		match = valueMatch(func(v string) bool { return strings.Contains(v, s.ContainsMatch) })
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := strmatch.Regex(s.SafeRegexMatch.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("safe_regex_match: %w", err)
		}
		match = valueMatch(re.MatchString)
	case *routev3.HeaderMatcher_RangeMatch:
		lo, hi := s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		match = valueMatch(func(v string) bool {
			n, err := strconv.ParseInt(v, 10, 64)
			return err == nil && n >= lo && n < hi
		})
	case *routev3.HeaderMatcher_StringMatch:
		f, err := strmatch.Compile(s.StringMatch)
		if err != nil {
			return nil, fmt.Errorf("string_match: %w", err)
		}
		match = valueMatch(f)
	default:
		return nil, fmt.Errorf("header matcher %T is not supported", s)
	}
	invert, missingEmpty := hm.GetInvertMatch(), hm.GetTreatMissingHeaderAsEmpty()
	return func(h http.Header) bool {
		vals, present := h[name]
		v := strings.Join(vals, ",") // Envoy matches the comma-joined value
		if !present && missingEmpty {
			present = true
		}
		return match(v, present) != invert
	}, nil
}

// Descriptors builds the descriptors of the entries at stage, exactly as
// Envoy: an entry whose action cannot produce its entry sends no
// descriptor; skip_if_absent drops only that entry.
func (p *Policy) Descriptors(stage uint32, h http.Header, a *RequestAttrs, out []*rlcommonv3.RateLimitDescriptor) []*rlcommonv3.RateLimitDescriptor {
	if p == nil {
		return out
	}
next:
	for _, e := range p.entries {
		if e.stage != stage && !p.anyStage {
			continue
		}
		d := &rlcommonv3.RateLimitDescriptor{}
		for _, act := range e.actions {
			k, v, ok := act(h, a)
			if !ok {
				continue next
			}
			if k != "" {
				d.Entries = append(d.Entries, &rlcommonv3.RateLimitDescriptor_Entry{Key: k, Value: v})
			}
		}
		if len(d.Entries) > 0 {
			out = append(out, d)
		}
	}
	return out
}
