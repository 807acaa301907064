// Package strmatch compiles envoy.type.matcher.v3.StringMatcher into a
// predicate; shared by the mesh features (health checks, rate limits).
package strmatch

import (
	"errors"
	"regexp"
	"strings"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Compile returns a predicate for m: exact, prefix, suffix, contains
// (each honouring ignore_case) or a full-match safe_regex (RE2, as Envoy).
func Compile(m *matcherv3.StringMatcher) (func(string) bool, error) {
	norm := func(s string) string { return s }
	if m.GetIgnoreCase() {
		norm = strings.ToLower
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		w := norm(p.Exact)
		return func(s string) bool { return norm(s) == w }, nil
	case *matcherv3.StringMatcher_Prefix:
		w := norm(p.Prefix)
		return func(s string) bool { return strings.HasPrefix(norm(s), w) }, nil
	case *matcherv3.StringMatcher_Suffix:
		w := norm(p.Suffix)
		return func(s string) bool { return strings.HasSuffix(norm(s), w) }, nil
	case *matcherv3.StringMatcher_Contains:
		w := norm(p.Contains)
		return func(s string) bool { return strings.Contains(norm(s), w) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := Regex(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, err
		}
		return re.MatchString, nil
	}
	return nil, errors.New("unsupported match pattern")
}

// Regex compiles a full-match regular expression.
func Regex(expr string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + expr + ")$")
}
