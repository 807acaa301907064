package strmatch

import (
	"testing"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func TestCompile(t *testing.T) {
	cases := []struct {
		m        *matcherv3.StringMatcher
		in       string
		want     bool
		wantFold bool
	}{
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "Web"}}, "web", false, true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "we"}}, "web", true, true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "EB"}}, "web", false, true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "e"}}, "web", true, true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "w.b"}}}, "web", true, true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "w"}}}, "web", false, false},
	}
	for i, tc := range cases {
		f, err := Compile(tc.m)
		if err != nil {
			t.Fatal(err)
		}
		if got := f(tc.in); got != tc.want {
			t.Errorf("case %d: %v want %v", i, got, tc.want)
		}
		tc.m.IgnoreCase = true
		f, _ = Compile(tc.m)
		if got := f(tc.in); got != tc.wantFold {
			t.Errorf("case %d ignore_case: %v want %v", i, got, tc.wantFold)
		}
	}
	if _, err := Compile(&matcherv3.StringMatcher{}); err == nil {
		t.Fatal("empty matcher accepted")
	}
	if _, err := Compile(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "("}}}); err == nil {
		t.Fatal("bad regex accepted")
	}
}
