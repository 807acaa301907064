package rules

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
)

// Cases ported from envoyproxy/ratelimit's test/config (config_test.go and
// its YAML fixtures, at the 2026 snapshot with middle wildcards,
// share_threshold, value_to_metric, quota_mode and metadata). The fixtures
// are rewritten here; what is kept is each case's meaning and verdict.

const wildcardRules = `
domain: w
descriptors:
  - key: wild
    value: foo*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: noWild
    value: foo
    rate_limit: {unit: minute, requests_per_unit: 21}
  - key: noVal
    rate_limit: {unit: minute, requests_per_unit: 22}
  - key: midWild
    value: bar*b
    rate_limit: {unit: minute, requests_per_unit: 23}
  - key: multiWild
    value: foo*bar*baz
    rate_limit: {unit: minute, requests_per_unit: 24}
  - key: host
    value: "*.example.com"
    rate_limit: {unit: minute, requests_per_unit: 25}
  - key: any
    value: "*"
    rate_limit: {unit: minute, requests_per_unit: 26}
  - key: any
    rate_limit: {unit: minute, requests_per_unit: 27}
  - key: nestedWild
    value: val1
    descriptors:
      - key: wild
        value: goo*
        rate_limit: {unit: minute, requests_per_unit: 28}
  - key: order
    value: "a*"
    rate_limit: {unit: minute, requests_per_unit: 29}
  - key: order
    value: "ab*"
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: lit
    value: "x*y"
    rate_limit: {unit: minute, requests_per_unit: 31}
  - key: lit
    value: "x*"
    rate_limit: {unit: minute, requests_per_unit: 32}
`

func TestWildcardsAnywhere(t *testing.T) {
	c := mustParse(t, wildcardRules)
	cases := []struct {
		kv   []string
		want int // requests_per_unit, -1 = no limit
		path string
	}{
		{[]string{"noVal", "foo1"}, 22, "noVal"},
		{[]string{"wild", "foo1"}, 20, "wild_foo*"},
		{[]string{"wild", "foo"}, 20, "wild_foo*"}, // '*' matches the empty run
		{[]string{"wild", "bar"}, -1, ""},
		{[]string{"noWild", "foo1"}, -1, ""}, // an exact value never matches as a prefix
		{[]string{"midWild", "barab"}, 23, "midWild_bar*b"},
		{[]string{"midWild", "bar123b"}, 23, "midWild_bar*b"},
		{[]string{"midWild", "barb"}, 23, "midWild_bar*b"},
		{[]string{"midWild", "bara"}, -1, ""},
		{[]string{"midWild", "xbarb"}, -1, ""},
		{[]string{"midWild", "bab"}, -1, ""}, // prefix and suffix must not overlap
		{[]string{"multiWild", "foo123bar456baz"}, 24, "multiWild_foo*bar*baz"},
		{[]string{"multiWild", "foobarbaz"}, 24, "multiWild_foo*bar*baz"},
		{[]string{"multiWild", "foo123baz"}, -1, ""},
		{[]string{"multiWild", "bar456baz"}, -1, ""},
		{[]string{"multiWild", "foobazbar"}, -1, ""}, // order matters
		{[]string{"host", "api.example.com"}, 25, "host_*.example.com"},
		{[]string{"host", "example.com"}, -1, ""},
		{[]string{"any", "x"}, 26, "any_*"},
		{[]string{"any", ""}, 26, "any_*"}, // an empty value matches "*" before the bare key, as the anchor
		{[]string{"nestedWild", "val1", "wild", "goo2"}, 28, "nestedWild_val1.wild_goo*"},
		{[]string{"order", "abc"}, 29, "order_a*"},  // first wildcard in file order wins
		{[]string{"order", "ab*"}, 30, "order_ab*"}, // a value equal to a pattern finds that rule first
		{[]string{"lit", "x*y"}, 31, "lit_x*y"},
		{[]string{"lit", "xzzy"}, 31, "lit_x*y"},
		{[]string{"lit", "xzz"}, 32, "lit_x*"},
	}
	for _, tc := range cases {
		got := c.Match("w", entries(tc.kv...))
		if tc.want < 0 {
			if got != nil {
				t.Errorf("%v: got %q, want no limit", tc.kv, got.Path)
			}
			continue
		}
		if got == nil || int(got.RequestsPerUnit) != tc.want || got.Path != tc.path {
			t.Errorf("%v: got %+v, want %d %q", tc.kv, got, tc.want, tc.path)
		}
	}
}

// FuzzGlob checks globMatch against a regular expression built from the
// same pattern.
func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{{"bar*b", "barb"}, {"foo*bar*baz", "foobarbaz"}, {"*", ""}, {"a**b", "ab"}, {"*a*a*", "aa"}, {"ab*ba", "aba"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		// The reference regexp works on UTF-8; globMatch on bytes.
		if !strings.Contains(pattern, "*") || len(pattern) > 64 || len(s) > 256 || !utf8.ValidString(pattern) || !utf8.ValidString(s) {
			return
		}
		parts := strings.Split(pattern, "*")
		q := make([]string, len(parts))
		for i, p := range parts {
			q[i] = regexp.QuoteMeta(p)
		}
		re := regexp.MustCompile(`^(?s:` + strings.Join(q, ".*") + `)$`)
		if got, want := globMatch(parts, s), re.MatchString(s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, regexp says %v", pattern, s, got, want)
		}
	})
}

const shareRules = `
domain: s
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: nested
    value: parent
    descriptors:
      - key: files
        value: nested/*
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 200}
  - key: files
    value: top/*
    share_threshold: true
    descriptors:
      - key: files
        value: nested/*
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 300}
  - key: route
    value: api/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: service
    value: svc/*
    share_threshold: true
    descriptors:
      - key: endpoint
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 80}
  - key: path
    value: path/*
    share_threshold: true
    descriptors:
      - key: file
        value: file/*
        share_threshold: false
        descriptors:
          - key: type
            rate_limit: {unit: minute, requests_per_unit: 120}
  - key: file
    value: test1
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: file
    value: test*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: midpath
    value: /api*v1
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: tenant
    value: t*prod
    share_threshold: true
    descriptors:
      - key: resource
        value: res*v2
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 60}
`

func TestShareThreshold(t *testing.T) {
	c := mustParse(t, shareRules)
	cases := []struct {
		kv     []string
		rpu    int
		key    []string // counter key/value pairs
		metric string   // envoyproxy/ratelimit stats key without the domain
	}{
		{[]string{"files", "files/a.pdf"}, 100, []string{"files", "files/*"}, "files_files/*"},
		{[]string{"files", "files/b.csv"}, 100, []string{"files", "files/*"}, "files_files/*"},
		{[]string{"nested", "parent", "files", "nested/f1"}, 200, []string{"nested", "parent", "files", "nested/*"}, "nested_parent.files_nested/*"},
		{[]string{"files", "top/f1", "files", "nested/f1"}, 300, []string{"files", "top/*", "files", "nested/*"}, "files_top/*.files_nested/*"},
		// share_threshold wins over value_to_metric in the label.
		{[]string{"route", "api/v1", "method", "GET"}, 60, []string{"route", "api/*", "method", "GET"}, "route_api/*.method"},
		// ... and over detailed_metric.
		{[]string{"service", "svc/user", "endpoint", "get"}, 80, []string{"service", "svc/*", "endpoint", "get"}, "service_svc/*.endpoint_get"},
		// A wildcard with share_threshold: false keeps a counter per value.
		{[]string{"path", "path/foo", "file", "file/doc1", "type", "pdf"}, 120, []string{"path", "path/*", "file", "file/doc1", "type", "pdf"}, "path_path/*.file_file/*.type"},
		// The exact value beats the shared wildcard and keeps its own counter.
		{[]string{"file", "test1"}, 50, []string{"file", "test1"}, "file_test1"},
		{[]string{"file", "test23"}, 100, []string{"file", "test*"}, "file_test*"},
		{[]string{"midpath", "/api-beta-v1"}, 100, []string{"midpath", "/api*v1"}, "midpath_/api*v1"},
		{[]string{"tenant", "t99prod", "resource", "resBBBv2"}, 60, []string{"tenant", "t*prod", "resource", "res*v2"}, "tenant_t*prod.resource_res*v2"},
	}
	for _, tc := range cases {
		es := entries(tc.kv...)
		l := c.Match("s", es)
		if l == nil || int(l.RequestsPerUnit) != tc.rpu {
			t.Errorf("%v: got %+v, want %d", tc.kv, l, tc.rpu)
			continue
		}
		if got := l.KeyValues(es); strings.Join(got, "|") != strings.Join(tc.key, "|") {
			t.Errorf("%v: counter key values %q, want %q", tc.kv, got, tc.key)
		}
		if got, _ := l.MetricLabel(es, l.DetailedMetric); got != tc.metric {
			t.Errorf("%v: metric label %q, want %q", tc.kv, got, tc.metric)
		}
	}
	if l := c.Match("s", entries("midpath", "/api/v2")); l != nil {
		t.Errorf("/api/v2 matched %q", l.Path)
	}
}

func TestValueToMetricLabels(t *testing.T) {
	c := mustParse(t, `
domain: v
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
  - key: plain
    descriptors:
      - key: http_method
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
  - key: wild
    value: foo*
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: wild2
    value: foo*
    descriptors:
      - key: other
        value_to_metric: true
        descriptors:
          - key: limit
            rate_limit: {unit: minute, requests_per_unit: 20}
  - key: exact
    value: x
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: detailed
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 20}
`)
	cases := []struct {
		kv      []string
		label   string
		dynamic bool
	}{
		{[]string{"route", "api", "http_method", "GET", "subject_id", "u1"}, "route_api.http_method_GET.subject_id", true},
		{[]string{"route", "", "http_method", "GET", "subject_id", "u1"}, "route.http_method_GET.subject_id", true},
		{[]string{"route", "", "http_method", "", "subject_id", "u1"}, "route.http_method.subject_id", true},
		{[]string{"plain", "api", "http_method", "GET", "subject_id", "u1"}, "plain.http_method.subject_id", false},
		{[]string{"wild", "foo1"}, "wild_foo1", true},
		{[]string{"wild2", "foo1", "other", "bar", "limit", "X"}, "wild2_foo*.other_bar.limit", true},
		{[]string{"exact", "x"}, "exact_x", false}, // an exact value is in the label anyway
		{[]string{"detailed", "d1"}, "detailed_d1", true},
	}
	for _, tc := range cases {
		es := entries(tc.kv...)
		l := c.Match("v", es)
		if l == nil {
			t.Errorf("%v: no limit", tc.kv)
			continue
		}
		got, dyn := l.MetricLabel(es, l.DetailedMetric)
		if got != tc.label || dyn != tc.dynamic {
			t.Errorf("%v: label %q (values %v), want %q (%v)", tc.kv, got, dyn, tc.label, tc.dynamic)
		}
		// value_to_metric never changes the counter: one per request value.
		if kv := l.KeyValues(es); strings.Join(kv, "|") != strings.Join(tc.kv, "|") {
			t.Errorf("%v: counter key values %q", tc.kv, kv)
		}
	}
}

func TestQuotaModeAndMetadata(t *testing.T) {
	c := mustParse(t, `
domain: m
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
        metadata:
          name: service_1
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 20}
    metadata:
      service_with_quota:
        name: service_2
        weight: 3
        tags: [a, 1, true, null, 2026-01-02]
  - key: key3
    metadata:
    rate_limit: {unit: minute, requests_per_unit: 20}
`)
	l := c.Match("m", entries("key1", "value1", "subkey1", "x"))
	if l == nil || l.QuotaMode || l.Metadata.GetFields()["name"].GetStringValue() != "service_1" {
		t.Fatalf("subkey1: %+v", l)
	}
	if l := c.Match("m", entries("key1", "value1", "subkey1", "subvalue1")); l == nil || l.Metadata != nil {
		t.Fatalf("subvalue1 has metadata: %+v", l)
	}
	l = c.Match("m", entries("key2", "q"))
	if l == nil || !l.QuotaMode {
		t.Fatalf("key2: %+v", l)
	}
	js, err := protojson.Marshal(l.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"service_with_quota":{"name":"service_2","tags":["a",1,true,null,"2026-01-02"],"weight":3}}`
	if compact(string(js)) != want {
		t.Fatalf("metadata %s, want %s", js, want)
	}
	if l := c.Match("m", entries("key3", "q")); l == nil || l.Metadata != nil {
		t.Fatalf("empty metadata block: %+v", l)
	}
}

func compact(s string) string { return strings.Join(strings.Fields(s), "") }

// TestAnchorConfigVerdicts: every configuration envoyproxy/ratelimit
// rejects is rejected here with file, line and field; every one it loads
// loads here.
func TestAnchorConfigVerdicts(t *testing.T) {
	bad := []struct{ name, src, want string }{
		{"empty domain", "domain: \"\"\ndescriptors:\n  - key: a\n", "bad.yaml:1: domain: must not be empty"},
		{"empty key", "domain: d\ndescriptors:\n  - key: \"\"\n    value: v\n", "bad.yaml:3: descriptors.key: descriptor has an empty or missing key"},
		{"duplicate composite key", "domain: d\ndescriptors:\n  - key: k1\n    value: v1\n\n  - key: k1\n    value: v1\n", `bad.yaml:6: descriptors.value: duplicate descriptor "k1"="v1"`},
		{"bad unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: foo\n      requests_per_unit: 5\n", `bad.yaml:5: descriptors.rate_limit.unit: invalid unit "foo"`},
		{"replaces self", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: n\n      unit: second\n      requests_per_unit: 5\n      replaces:\n        - name: n\n", "bad.yaml:9: descriptors.rate_limit.replaces: a limit must not replace itself"},
		{"replaces empty", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      replaces:\n        - name: \"\"\n", "bad.yaml:8: descriptors.rate_limit.replaces.name: must not be empty"},
		{"bad yaml", "domain: d\ndescriptors:\n  - key: [\n", "bad.yaml: yaml: line"},
		{"misspelled rate_limit", "domain: d\ndescriptors:\n  - key: k\n    ratelimit:\n      unit: day\n      requests_per_unit: 5\n", "bad.yaml:4: descriptors.ratelimit: unknown field"},
		{"misspelled requests_per_unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requestsperunit: 5\n", "bad.yaml:6: descriptors.rate_limit.requestsperunit: unknown field"},
		{"non-string key", "0.25: d\ndescriptors: []\n", "bad.yaml:1: root.0.25: unknown field"},
		{"list of non-maps", "domain: d\ndescriptors:\n  - a\n  - b\n", "bad.yaml:3: descriptors: must be a mapping"},
		{"unlimited with unit", "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: day\n", "bad.yaml:6: descriptors.rate_limit.unit: must not be set when unlimited is true"},
		{"share_threshold without wildcard", "domain: d\ndescriptors:\n  - key: k\n    value: plain\n    share_threshold: true\n    rate_limit: {unit: minute, requests_per_unit: 1}\n", "bad.yaml:5: descriptors.share_threshold: needs a wildcard value"},
		{"metadata not a map", "domain: d\ndescriptors:\n  - key: k\n    metadata: just-a-string\n", "bad.yaml:4: descriptors.metadata: must be a mapping"},
		{"nested unknown key", "domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - key: s\n        quota: true\n", "bad.yaml:6: descriptors.descriptors.quota: unknown field"},
	}
	for _, tc := range bad {
		t.Run("reject/"+tc.name, func(t *testing.T) {
			_, err := Parse([]File{{Name: "bad.yaml", Data: []byte(tc.src)}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// Two files, one domain (MERGE_DOMAIN_CONFIG off, the anchor's default).
	if _, err := Parse([]File{{Name: "a.yaml", Data: []byte("domain: d\n")}, {Name: "dup.yaml", Data: []byte("domain: d\n")}}); err == nil || !strings.Contains(err.Error(), `dup.yaml: domain: duplicate domain "d"`) {
		t.Fatalf("duplicate domain: %v", err)
	}
	for name, src := range map[string]string{
		"wildcards":       wildcardRules,
		"share_threshold": shareRules,
		"everything": `
domain: all
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        shadow_mode: true
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key2
    value: value3
  - key: key4
    rate_limit: {name: key4_rate_limit, unit: day, requests_per_unit: 1}
  - key: key6
    rate_limit: {unlimited: true}
  - key: key7
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 70}
  - key: key8
    value: v*
    value_to_metric: true
    share_threshold: false
    quota_mode: false
    rate_limit: {unit: hour, requests_per_unit: 8, replaces: [{name: key4_rate_limit}]}
  - key: key9
    quota_mode: true
    metadata: {any: {nested: [1, "two"]}}
    rate_limit: {unit: week, requests_per_unit: 9}
  - key: key10
    rate_limit: {unit: month, requests_per_unit: 10}
  - key: key11
    rate_limit: {unit: year, requests_per_unit: 11}
`,
	} {
		if _, err := Parse([]File{{Name: name + ".yaml", Data: []byte(src)}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestAnchorCompatExampleLoads(t *testing.T) {
	c, err := Load("../../examples/anchor-compat")
	if err != nil {
		t.Fatal(err)
	}
	es := entries("model", "gpt-4o-mini")
	if l := c.Match("ai", es); l == nil || !l.QuotaMode || !l.SharedKey || l.Metadata == nil {
		t.Fatalf("ai model limit = %+v", l)
	}
}

// BenchmarkMatch is one descriptor's lookup: exact, bare key, and a middle
// wildcard found after 20 non-matching wildcards of the same key.
func BenchmarkMatch(b *testing.B) {
	src := "domain: b\ndescriptors:\n  - key: k\n    value: exact\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: bare\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	for i := 0; i < 20; i++ {
		src += "  - key: k\n    value: \"p" + string(rune('a'+i)) + "*x*\"\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	}
	src += "  - key: k\n    value: \"/api/*/items*\"\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	c, err := Parse([]File{{Name: "b.yaml", Data: []byte(src)}})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, k, v string }{{"exact", "k", "exact"}, {"bare", "bare", "anything"}, {"wildcard_21st", "k", "/api/v1/items/42"}} {
		es := entries(tc.k, tc.v)
		if c.Match("b", es) == nil {
			b.Fatalf("%s: no match", tc.name)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				c.Match("b", es)
			}
		})
	}
}

// TestReadmeRuleExampleLoads keeps the README's rule-format example honest.
func TestReadmeRuleExampleLoads(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## Rule files")
	j := strings.Index(s[i:], "```yaml\n")
	if i < 0 || j < 0 {
		t.Fatal("README has no rule example")
	}
	body := s[i+j+len("```yaml\n"):]
	body = body[:strings.Index(body, "```")]
	c, err := Parse([]File{{Name: "README.md", Data: []byte(body)}})
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Match("edge", entries("files", "files/x")); l == nil || !l.SharedKey {
		t.Fatalf("files/x: %+v", l)
	}
}
