package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Fixtures in the shape of envoyproxy/ratelimit's test/config
// merge_domain_key1.yaml and merge_domain_key2.yaml (TestDomainMerge), plus
// the cases its loader decides: the same top-level descriptor in two files
// is "duplicate descriptor composite key", nested levels are never merged.
const (
	mergeKey1 = "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10}\n"
	mergeKey2 = "domain: test-domain\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 20}\n"
)

type want struct {
	domain string
	kv     []string
	limit  uint32 // 0: no limit matches
}

func TestMergeDomains(t *testing.T) {
	cases := []struct {
		name    string
		files   []File
		merge   bool
		wantErr []string // every one must be in the error; nil: must load
		want    []want
	}{
		{
			name:    "off: duplicate domain names both files",
			files:   []File{{"a.yaml", []byte(mergeKey1)}, {"b.yaml", []byte(mergeKey2)}},
			wantErr: []string{`b.yaml: domain: duplicate domain "test-domain" (also in a.yaml)`, "--merge-domain-config"},
		},
		{
			name:    "off: the refused file's own errors are reported too",
			files:   []File{{"a.yaml", []byte(mergeKey1)}, {"b.yaml", []byte("domain: test-domain\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n")}},
			wantErr: []string{`b.yaml:4: descriptors.rate_limit.unit: invalid unit "fortnight"`, `b.yaml: domain: duplicate domain "test-domain"`},
		},
		{
			name:  "on: descriptors of both files answer (anchor TestDomainMerge)",
			files: []File{{"a.yaml", []byte(mergeKey1)}, {"b.yaml", []byte(mergeKey2)}},
			merge: true,
			want: []want{
				{"test-domain", []string{"key1", "value1"}, 10},
				{"test-domain", []string{"key2", "value2"}, 20},
				{"test-domain", []string{"key1", "value2"}, 0},
				{"foo_domain", []string{"key1", "value1"}, 0},
			},
		},
		{
			name: "on: other domains stay apart, three files",
			files: []File{
				{"a.yaml", []byte(mergeKey1)},
				{"b.yaml", []byte("domain: other\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 7}\n")},
				{"c.yaml", []byte(mergeKey2)},
			},
			merge: true,
			want: []want{
				{"test-domain", []string{"key1", "value1"}, 10},
				{"test-domain", []string{"key2", "value2"}, 20},
				{"other", []string{"key2", "value2"}, 7},
				{"other", []string{"key1", "value1"}, 0},
			},
		},
		{
			name: "on: nested levels under different top-level keys",
			files: []File{
				{"a.yaml", []byte("domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: x\n        rate_limit: {unit: second, requests_per_unit: 1}\n")},
				{"b.yaml", []byte("domain: d\ndescriptors:\n  - key: b\n    descriptors:\n      - key: x\n        rate_limit: {unit: second, requests_per_unit: 2}\n")},
			},
			merge: true,
			want: []want{
				{"d", []string{"a", "1", "x", "y"}, 1},
				{"d", []string{"b", "1", "x", "y"}, 2},
			},
		},
		{
			name: "on: same top-level key with different children is an error (the anchor does not merge nested levels)",
			files: []File{
				{"a.yaml", []byte("domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: x\n        rate_limit: {unit: second, requests_per_unit: 1}\n")},
				{"b.yaml", []byte("domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: y\n        rate_limit: {unit: second, requests_per_unit: 2}\n")},
			},
			merge:   true,
			wantErr: []string{`b.yaml:3: descriptors.key: duplicate descriptor composite key "a" in domain "d": also defined at a.yaml:3`},
		},
		{
			name: "on: same top-level key=value is an error naming both files",
			files: []File{
				{"a.yaml", []byte(mergeKey1)},
				{"b.yaml", []byte("domain: test-domain\ndescriptors:\n  - key: key2\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: key1\n    value: value1\n    rate_limit: {unit: second, requests_per_unit: 1}\n")},
			},
			merge:   true,
			wantErr: []string{`b.yaml:5: descriptors.value: duplicate descriptor composite key "key1"="value1" in domain "test-domain": also defined at a.yaml:3`},
		},
		{
			name: "on: a duplicate inside one file keeps its own error",
			files: []File{
				{"a.yaml", []byte(mergeKey1)},
				{"b.yaml", []byte("domain: test-domain\ndescriptors:\n  - key: k\n  - key: k\n")},
			},
			merge:   true,
			wantErr: []string{`b.yaml:4: descriptors.key: duplicate descriptor "k" at this level`},
		},
		{
			name: "on: replaces resolve across the merged domain",
			files: []File{
				{"a.yaml", []byte("domain: d\ndescriptors:\n  - key: api\n    rate_limit: {name: general, unit: hour, requests_per_unit: 100}\n")},
				{"b.yaml", []byte("domain: d\ndescriptors:\n  - key: api_key\n    value: vip\n    rate_limit: {unit: hour, requests_per_unit: 1000, replaces: [{name: general}]}\n")},
			},
			merge: true,
			want: []want{
				{"d", []string{"api", "x"}, 100},
				{"d", []string{"api_key", "vip"}, 1000},
			},
		},
		{
			name: "on: a replaces naming a limit of another domain still dangles",
			files: []File{
				{"a.yaml", []byte("domain: other\ndescriptors:\n  - key: api\n    rate_limit: {name: general, unit: hour, requests_per_unit: 100}\n")},
				{"b.yaml", []byte(mergeKey1)},
				{"c.yaml", []byte("domain: test-domain\ndescriptors:\n  - key: vip\n    rate_limit:\n      unit: hour\n      requests_per_unit: 1\n      replaces: [{name: general}]\n")},
			},
			merge:   true,
			wantErr: []string{`c.yaml:7: rate_limit.replaces.name: "general" names no rate_limit in domain "test-domain"`},
		},
		{
			name: "on: wildcards are tried in file order, an exact value of a later file still wins",
			files: []File{
				{"a.yaml", []byte("domain: d\ndescriptors:\n  - key: path\n    value: /api/*\n    rate_limit: {unit: second, requests_per_unit: 1}\n")},
				{"b.yaml", []byte("domain: d\ndescriptors:\n  - key: path\n    value: /api/v1/*\n    rate_limit: {unit: second, requests_per_unit: 2}\n  - key: path\n    value: /api/v1/exact\n    rate_limit: {unit: second, requests_per_unit: 3}\n  - key: path\n    rate_limit: {unit: second, requests_per_unit: 4}\n")},
			},
			merge: true,
			want: []want{
				{"d", []string{"path", "/api/v1/x"}, 1},
				{"d", []string{"path", "/api/v1/exact"}, 3},
				{"d", []string{"path", "/other"}, 4},
			},
		},
		{
			name: "on: the same files in the other order",
			files: []File{
				{"a.yaml", []byte("domain: d\ndescriptors:\n  - key: path\n    value: /api/v1/*\n    rate_limit: {unit: second, requests_per_unit: 2}\n")},
				{"b.yaml", []byte("domain: d\ndescriptors:\n  - key: path\n    value: /api/*\n    rate_limit: {unit: second, requests_per_unit: 1}\n")},
			},
			merge: true,
			want: []want{
				{"d", []string{"path", "/api/v1/x"}, 2},
				{"d", []string{"path", "/api/x"}, 1},
			},
		},
		{
			name: "on: a file with errors fails the whole set",
			files: []File{
				{"a.yaml", []byte(mergeKey1)},
				{"b.yaml", []byte("domain: test-domain\ndescriptors:\n  - key: k\n    bogus: 1\n")},
			},
			merge:   true,
			wantErr: []string{"b.yaml:4: descriptors.bogus: unknown field"},
		},
		{
			name:  "on: a file with only the domain adds nothing",
			files: []File{{"a.yaml", []byte("domain: test-domain\n")}, {"b.yaml", []byte(mergeKey1)}},
			merge: true,
			want:  []want{{"test-domain", []string{"key1", "value1"}, 10}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseOptions(tc.files, Options{MergeDomains: tc.merge})
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("loaded, want error containing %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Files) != len(tc.files) {
				t.Fatalf("files %v", c.Files)
			}
			for _, w := range tc.want {
				l := c.Match(w.domain, entries(w.kv...))
				switch {
				case w.limit == 0 && l != nil:
					t.Errorf("%s %v matched %s (%d), want none", w.domain, w.kv, l.Source, l.RequestsPerUnit)
				case w.limit != 0 && (l == nil || l.RequestsPerUnit != w.limit):
					t.Errorf("%s %v matched %+v, want limit %d", w.domain, w.kv, l, w.limit)
				}
			}
		})
	}
}

// TestLoadOptionsMergesDirectoryInNameOrder: a directory's files merge in
// name order, so the earlier name's wildcard is tried first.
func TestLoadOptionsMergesDirectoryInNameOrder(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("domain: d\ndescriptors:\n  - key: p\n    value: x*\n    rate_limit: {unit: second, requests_per_unit: 2}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "a.yml"), []byte("domain: d\ndescriptors:\n  - key: p\n    value: \"*\"\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: q\n    rate_limit: {unit: second, requests_per_unit: 5}\n"), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), `duplicate domain "d"`) {
		t.Fatalf("merge off: %v", err)
	}
	c, err := LoadOptions(dir, Options{MergeDomains: true})
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Match("d", entries("p", "xy")); l == nil || l.RequestsPerUnit != 1 || !strings.HasSuffix(l.Source, "a.yml:5") {
		t.Fatalf("p=xy matched %+v, want a.yml's '*'", l)
	}
	if l := c.Match("d", entries("q", "1")); l == nil || l.RequestsPerUnit != 5 {
		t.Fatalf("q matched %+v", l)
	}
}
