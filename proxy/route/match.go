package route

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// StringMatcher is a compiled envoy.type.matcher.v3.StringMatcher.
type StringMatcher struct {
	kind       int // 0 exact, 1 prefix, 2 suffix, 3 contains, 4 regex
	value      string
	ignoreCase bool
	re         *regexp.Regexp
}

const (
	smExact = iota
	smPrefix
	smSuffix
	smContains
	smRegex
)

func compileStringMatcher(m *matcherv3.StringMatcher) (*StringMatcher, error) {
	sm := &StringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.value = smExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.value = smPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.value = smSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.value = smContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, err
		}
		sm.kind, sm.re = smRegex, re
	default:
		return nil, fmt.Errorf("unsupported string matcher %T", p)
	}
	if sm.ignoreCase {
		sm.value = strings.ToLower(sm.value)
	}
	return sm, nil
}

// compileRegex anchors the pattern: Envoy's safe_regex must match the whole value.
func compileRegex(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", expr, err)
	}
	return re, nil
}

// Match reports whether v matches.
func (m *StringMatcher) Match(v string) bool {
	if m.kind == smRegex {
		return m.re.MatchString(v)
	}
	if m.ignoreCase {
		v = strings.ToLower(v)
	}
	switch m.kind {
	case smExact:
		return v == m.value
	case smPrefix:
		return strings.HasPrefix(v, m.value)
	case smSuffix:
		return strings.HasSuffix(v, m.value)
	default:
		return strings.Contains(v, m.value)
	}
}

// headerMatcher is a compiled HeaderMatcher.
type headerMatcher struct {
	name          string // canonical form for http.Header lookup
	present       *bool
	str           *StringMatcher
	rangeLo       int64
	rangeHi       int64
	isRange       bool
	invert        bool
	missingAsEmpt bool
}

func compileHeaderMatcher(h *routev3.HeaderMatcher) (*headerMatcher, error) {
	hm := &headerMatcher{name: http.CanonicalHeaderKey(h.GetName()), invert: h.GetInvertMatch(), missingAsEmpt: h.GetTreatMissingHeaderAsEmpty()}
	if h.GetName() == ":authority" {
		hm.name = "Host"
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		t := true
		hm.present = &t
	case *routev3.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		hm.present = &v
	case *routev3.HeaderMatcher_StringMatch:
		hm.str, err = compileStringMatcher(s.StringMatch)
	case *routev3.HeaderMatcher_ExactMatch:
		hm.str = &StringMatcher{kind: smExact, value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.str = &StringMatcher{kind: smPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.str = &StringMatcher{kind: smSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.str = &StringMatcher{kind: smContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		var re *regexp.Regexp
		re, err = compileRegex(s.SafeRegexMatch.GetRegex())
		hm.str = &StringMatcher{kind: smRegex, re: re}
	case *routev3.HeaderMatcher_RangeMatch:
		hm.isRange, hm.rangeLo, hm.rangeHi = true, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
	default:
		return nil, fmt.Errorf("header %q: unsupported match %T", h.GetName(), s)
	}
	if err != nil {
		return nil, fmt.Errorf("header %q: %w", h.GetName(), err)
	}
	return hm, nil
}

func (m *headerMatcher) match(r *http.Request) bool {
	var vals []string
	if m.name == "Host" {
		vals = []string{r.Host}
	} else {
		vals = r.Header[m.name]
	}
	return m.matchValues(vals) != m.invert
}

func (m *headerMatcher) matchValues(vals []string) bool {
	if len(vals) == 0 {
		if m.present != nil {
			return !*m.present
		}
		if !m.missingAsEmpt {
			return false
		}
		vals = []string{""}
	}
	if m.present != nil {
		return *m.present
	}
	// Envoy matches multiple values joined by ",".
	v := vals[0]
	if len(vals) > 1 {
		v = strings.Join(vals, ",")
	}
	if m.isRange {
		n, err := strconv.ParseInt(v, 10, 64)
		return err == nil && n >= m.rangeLo && n < m.rangeHi
	}
	return m.str.Match(v)
}

// queryMatcher is a compiled QueryParameterMatcher.
type queryMatcher struct {
	name    string
	present bool
	str     *StringMatcher
}

func compileQueryMatcher(q *routev3.QueryParameterMatcher) (*queryMatcher, error) {
	qm := &queryMatcher{name: q.GetName()}
	switch s := q.GetQueryParameterMatchSpecifier().(type) {
	case *routev3.QueryParameterMatcher_StringMatch:
		sm, err := compileStringMatcher(s.StringMatch)
		if err != nil {
			return nil, fmt.Errorf("query parameter %q: %w", q.GetName(), err)
		}
		qm.str = sm
	case *routev3.QueryParameterMatcher_PresentMatch:
		qm.present = s.PresentMatch
	default:
		qm.present = true
	}
	return qm, nil
}

func (m *queryMatcher) match(q map[string][]string) bool {
	vals, ok := q[m.name]
	if m.str == nil {
		return ok == m.present
	}
	return ok && len(vals) > 0 && m.str.Match(vals[0])
}
