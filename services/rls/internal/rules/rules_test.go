package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// anchorExample is in envoyproxy/ratelimit's README style: nested
// descriptors, bare keys, wildcard, unlimited, shadow mode, replaces.
const anchorExample = `
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
    descriptors:
      - key: path
        value: /foo*
        rate_limit:
          unit: minute
          requests_per_unit: 3
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit:
          unit: hour
          requests_per_unit: 10
  - key: internal
    rate_limit:
      unlimited: true
  - key: banned
    rate_limit:
      unit: Second
      requests_per_unit: 0
  - key: shadow
    shadow_mode: true
    detailed_metric: yes
    rate_limit:
      unit: MINUTE
      requests_per_unit: 2
  - key: api
    rate_limit:
      name: general
      unit: minute
      requests_per_unit: 100
  - key: api_key
    value: vip
    rate_limit:
      unit: minute
      requests_per_unit: 1000
      replaces:
        - name: general
  - key: tb
    rate_limit:
      unit: second
      requests_per_unit: 10
      algorithm: token_bucket
      burst: 20
`

func entries(kv ...string) []*rlcommon.RateLimitDescriptor_Entry {
	var out []*rlcommon.RateLimitDescriptor_Entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse([]File{{Name: "t.yaml", Data: []byte(src)}})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return c
}

func TestMatch(t *testing.T) {
	c := mustParse(t, anchorExample)
	cases := []struct {
		name    string
		domain  string
		kv      []string
		wantRPU int // -1: no limit
		path    string
	}{
		{"exact value", "mongo_cps", []string{"database", "users"}, 500, "database_users"},
		{"unknown value of valued key", "mongo_cps", []string{"database", "other"}, -1, ""},
		{"bare key any value", "mongo_cps", []string{"remote_address", "10.0.0.1"}, 10, "remote_address"},
		{"nested wildcard", "mongo_cps", []string{"remote_address", "1.2.3.4", "path", "/foo/bar"}, 3, "remote_address.path_/foo*"},
		{"wildcard prefix mismatch", "mongo_cps", []string{"remote_address", "1.2.3.4", "path", "/fo"}, -1, ""},
		{"depth mismatch shorter", "mongo_cps", []string{"key1", "value1"}, -1, ""},
		{"depth match", "mongo_cps", []string{"key1", "value1", "subkey1", "x"}, 10, "key1_value1.subkey1"},
		{"depth mismatch longer", "mongo_cps", []string{"database", "users", "x", "y"}, -1, ""},
		{"unknown domain", "nope", []string{"database", "users"}, -1, ""},
		{"key with underscore never matches key+value", "mongo_cps", []string{"database_users", ""}, -1, ""},
		{"wildcard key must match exactly", "mongo_cps", []string{"remote_address", "1", "pat", "h/foo"}, -1, ""},
		{"case sensitive unit", "mongo_cps", []string{"shadow", "z"}, 2, "shadow"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := c.Match(tc.domain, entries(tc.kv...))
			if tc.wantRPU < 0 {
				if got != nil {
					t.Fatalf("got limit %+v, want none", got)
				}
				return
			}
			if got == nil {
				t.Fatalf("no limit, want %d", tc.wantRPU)
			}
			if int(got.RequestsPerUnit) != tc.wantRPU || got.Path != tc.path {
				t.Fatalf("got %d %q, want %d %q", got.RequestsPerUnit, got.Path, tc.wantRPU, tc.path)
			}
		})
	}
	if l := c.Match("mongo_cps", entries("internal", "x")); l == nil || !l.Unlimited {
		t.Fatalf("unlimited: %+v", l)
	}
	if l := c.Match("mongo_cps", entries("shadow", "x")); !l.ShadowMode || !l.DetailedMetric || l.Unit != rlsv3.RateLimitResponse_RateLimit_MINUTE {
		t.Fatalf("shadow: %+v", l)
	}
	if l := c.Match("mongo_cps", entries("api_key", "vip")); len(l.Replaces) != 1 || l.Replaces[0] != "general" {
		t.Fatalf("replaces: %+v", l)
	}
	if l := c.Match("mongo_cps", entries("tb", "a")); l.Algorithm != TokenBucket || l.Capacity() != 20 {
		t.Fatalf("token bucket: %+v", l)
	}
	if l := c.Match("mongo_cps", entries("banned", "a")); l.RequestsPerUnit != 0 || l.Unit != rlsv3.RateLimitResponse_RateLimit_SECOND {
		t.Fatalf("banned: %+v", l)
	}
}

func TestExactBeatsWildcardBeatsBare(t *testing.T) {
	c := mustParse(t, `
domain: d
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: ab*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: k
    value: a*
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: k
    value: abc
    rate_limit: {unit: second, requests_per_unit: 4}
`)
	for v, want := range map[string]uint32{"abc": 4, "abd": 2, "axx": 3, "zzz": 1, "": 1} {
		if got := c.Match("d", entries("k", v)); got == nil || got.RequestsPerUnit != want {
			t.Errorf("value %q: got %+v, want %d", v, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"unknown root field", "domain: d\nfoo: 1\n", "t.yaml:2: root.foo: unknown field"},
		{"unknown descriptor field", "domain: d\ndescriptors:\n  - key: a\n    vaule: x\n", "t.yaml:4: descriptors.vaule: unknown field"},
		{"misspelled rate limit field", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      request_per_unit: 5\n", "t.yaml:6: descriptors.rate_limit.request_per_unit: unknown field"},
		{"duplicate key", "domain: d\ndomain: e\n", "t.yaml:2: root.domain: duplicate key"},
		{"bad unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n", `t.yaml:5: descriptors.rate_limit.unit: invalid unit "fortnight"`},
		{"missing unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      requests_per_unit: 5\n", "t.yaml:5: descriptors.rate_limit.unit: missing"},
		{"unlimited with unit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      unlimited: true\n", "descriptors.rate_limit.unit: must not be set when unlimited"},
		{"negative rpu", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n", "descriptors.rate_limit.requests_per_unit: must be an integer"},
		{"string rpu", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: five}\n", "requests_per_unit: must be an integer"},
		{"empty key", "domain: d\ndescriptors:\n  - value: a\n", "t.yaml:3: descriptors.key: descriptor has an empty or missing key"},
		{"duplicate descriptor", "domain: d\ndescriptors:\n  - key: a\n  - key: a\n", `t.yaml:4: descriptors.key: duplicate descriptor "a"`},
		{"duplicate wildcard", "domain: d\ndescriptors:\n  - key: a\n    value: x*\n  - key: a\n    value: x*\n", `duplicate descriptor "a"="x*"`},
		{"dangling replaces", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: nothere\n", `t.yaml:8: rate_limit.replaces.name: "nothere" names no rate_limit`},
		{"replaces self", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: me\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: me\n", "must not replace itself"},
		{"empty replaces", "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: \"\"\n", "replaces.name: must not be empty"},
		{"empty domain", "domain: \"\"\n", "t.yaml:1: domain: must not be empty"},
		{"missing domain", "descriptors: []\n", "domain: missing"},
		{"empty file", "", "domain: file is empty"},
		{"not a mapping", "- a\n", "root: must be a mapping"},
		{"bad algorithm", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky}\n", `algorithm: unknown algorithm "leaky"`},
		{"burst without token bucket", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}\n", "burst: only valid with algorithm: token_bucket"},
		{"quota mode not a bool", "domain: d\ndescriptors:\n  - key: a\n    quota_mode: sometimes\n", `descriptors.quota_mode: must be true or false, got "sometimes"`},
		{"quota mode inside rate_limit", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, quota_mode: true}\n", "descriptors.rate_limit.quota_mode: unknown field (allowed: algorithm, burst, name, replaces, requests_per_unit, unit, unlimited); quota_mode belongs on the descriptor"},
		{"share threshold without wildcard", "domain: d\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n", `t.yaml:5: descriptors.share_threshold: needs a wildcard value (containing '*')`},
		{"share threshold on bare key", "domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n", `t.yaml:4: descriptors.share_threshold: needs a wildcard value`},
		{"metadata not a mapping", "domain: d\ndescriptors:\n  - key: a\n    metadata: [1, 2]\n", "t.yaml:4: descriptors.metadata: must be a mapping"},
		{"metadata duplicate key", "domain: d\ndescriptors:\n  - key: a\n    metadata:\n      x: 1\n      x: 2\n", "t.yaml:6: descriptors.metadata.x: duplicate key"},
		{"metadata nan", "domain: d\ndescriptors:\n  - key: a\n    metadata: {x: .nan}\n", "descriptors.metadata.x: \".nan\" is not a finite number"},
		{"value_to_metric not a bool", "domain: d\ndescriptors:\n  - key: a\n    value_to_metric: 2\n", "descriptors.value_to_metric: must be true or false"},
		{"bad bool", "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n", `shadow_mode: must be true or false, got "maybe"`},
		{"descriptors not a list", "domain: d\ndescriptors: {key: a}\n", "descriptors: must be a list"},
		{"yaml syntax", "domain: [\n", "t.yaml: yaml:"},
		{"merge key", "domain: d\nx: &a {key: b}\n", "root.x: unknown field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]File{{Name: "t.yaml", Data: []byte(tc.src)}})
			if err == nil {
				t.Fatalf("parsed, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestDuplicateDomainAcrossFiles(t *testing.T) {
	_, err := Parse([]File{{Name: "a.yaml", Data: []byte("domain: d\n")}, {Name: "b.yaml", Data: []byte("domain: d\n")}})
	if err == nil || !strings.Contains(err.Error(), `b.yaml: domain: duplicate domain "d" (also in a.yaml)`) {
		t.Fatalf("err = %v", err)
	}
}

func TestReadPathDirectoryAndConfigMapLayout(t *testing.T) {
	dir := t.TempDir()
	// Kubernetes ConfigMap volume: ..2026_x/{a,b}.yaml, ..data -> ..2026_x, a.yaml -> ..data/a.yaml.
	ts := filepath.Join(dir, "..2026_11_24")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ts, "a.yaml"), []byte("domain: a\n"), 0o644)
	os.WriteFile(filepath.Join(ts, "b.yml"), []byte("domain: b\n"), 0o644)
	os.Symlink("..2026_11_24", filepath.Join(dir, "..data"))
	os.Symlink("..data/a.yaml", filepath.Join(dir, "a.yaml"))
	os.Symlink("..data/b.yml", filepath.Join(dir, "b.yml"))
	os.WriteFile(filepath.Join(dir, "README.txt"), []byte("not yaml"), 0o644)
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !c.HasDomain("a") || !c.HasDomain("b") || len(c.Files) != 2 {
		t.Fatalf("domains %v files %v", c.Domains(), c.Files)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing path loaded")
	}
}

func TestExampleRulesLoad(t *testing.T) {
	c, err := Load("../../examples/rules")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Match("sidemesh", entries("user", "alice"))
	if l == nil || l.RequestsPerUnit != 5 || l.Unit != rlsv3.RateLimitResponse_RateLimit_MINUTE {
		t.Fatalf("sidemesh user limit = %+v", l)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(anchorExample))
	f.Add([]byte("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n"))
	f.Add([]byte("domain: &x d\ndescriptors: [*x]\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("domain: d\ndescriptors:\n  - &d {key: a, descriptors: [*d]}\n"))
	f.Add([]byte("\xff\xfe"))
	f.Add([]byte(wildcardRules))
	f.Add([]byte(shareRules))
	f.Add([]byte("domain: d\ndescriptors:\n  - key: a\n    value: \"*b*\"\n    share_threshold: true\n    value_to_metric: true\n    quota_mode: true\n    metadata: {x: [1, {y: &m z}], w: *m}\n    rate_limit: {unit: second, requests_per_unit: 1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse([]File{{Name: "f.yaml", Data: data}})
		if err == nil {
			for _, es := range [][]*rlcommon.RateLimitDescriptor_Entry{entries("a", "b"), entries("a", "xbx", "c", "")} {
				if l := c.Match("d", es); l != nil {
					if len(l.Levels) != len(es) || len(l.KeyValues(es)) != 2*len(es) {
						t.Fatalf("limit %q: %d levels, %d key values for %d entries", l.Path, len(l.Levels), len(l.KeyValues(es)), len(es))
					}
					l.MetricLabel(es, true)
				}
			}
		} else if !strings.HasPrefix(err.Error(), "f.yaml") {
			t.Fatalf("error does not name the file: %v", err)
		}
		// The same file merged after another file of domain d: it loads
		// unless it defines one of that file's top-level descriptors, and
		// the other file's rules answer.
		mc, merr := ParseOptions([]File{{Name: "g.yaml", Data: []byte(fuzzMergeBase)}, {Name: "f.yaml", Data: data}}, Options{MergeDomains: true})
		switch {
		case merr == nil:
			if l := mc.Match("d", entries("g", "1")); l == nil || l.Name != "gl" {
				t.Fatalf("merged: g's rule lost: %+v", l)
			}
		case !strings.HasPrefix(merr.Error(), "f.yaml"):
			t.Fatalf("merged error does not name f.yaml first: %v", merr)
		case err == nil && !strings.Contains(merr.Error(), "duplicate descriptor composite key"):
			t.Fatalf("loads alone, merged error is not a duplicate top-level key: %v", merr)
		}
	})
}

const fuzzMergeBase = "domain: d\ndescriptors:\n  - key: g\n    rate_limit: {name: gl, unit: second, requests_per_unit: 1}\n  - key: a\n    value: \"*z\"\n    rate_limit: {unit: second, requests_per_unit: 2}\n"

func TestBenchRulesLoad(t *testing.T) {
	c, err := Load("../../examples/bench")
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Match("bench", entries("tight", "x")); l == nil || l.RequestsPerUnit != 5 {
		t.Fatalf("bench tight = %+v", l)
	}
}
