package model

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

// sameAsParse parses data with p and with Parse and fails unless both give
// the same model or the same error.
func sameAsParse(t *testing.T, p *Parser, data []byte) (*Mesh, error) {
	t.Helper()
	src := Source{Name: "m.yaml", Data: data}
	want, werr := Parse(src)
	got, gerr := p.Parse(src)
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("Parser: %v\nParse: %v\ninput:\n%s", gerr, werr, data)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("Parser and Parse disagree on\n%s\nParser: %+v\nParse:  %+v", data, got, want)
	}
	return got, gerr
}

func servicesModel(n, port int) string {
	var b strings.Builder
	b.WriteString("# generated\nservices:\n")
	for i := range n {
		p := 80
		if i == 0 {
			p = port
		}
		fmt.Fprintf(&b, "  - name: svc-%d\n    protocol: grpc\n    endpoints:\n", i)
		for e := range 10 {
			fmt.Fprintf(&b, "      - {address: 10.%d.%d.%d, port: %d, zone: z}\n", i/250, i%250, e+1, p)
		}
	}
	b.WriteString("routes:\n  - name: r\n    hosts: [svc-1]\n    http:\n      - route: [{service: svc-1}]\n")
	return b.String()
}

// TestParserReusesEntries: a reload where one service changed parses that
// entry only, and gives Parse's model.
func TestParserReusesEntries(t *testing.T) {
	p := NewParser()
	sameAsParse(t, p, []byte(servicesModel(5, 80)))
	before := p.items
	if len(before) != 5 {
		t.Fatalf("remembered %d entries, want 5", len(before))
	}
	m, err := sameAsParse(t, p, []byte(servicesModel(5, 81)))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Services[0].Endpoints[0].Port; got != 81 {
		t.Fatalf("port %d, want 81", got)
	}
	reused := 0
	for text, n := range p.items {
		if before[text] == n {
			reused++
		}
	}
	if reused != 4 {
		t.Fatalf("%d entries reused, want 4 (all but the changed one)", reused)
	}
}

// TestParserFallsBack: text the shortcut cannot take, and bad models, give
// exactly Parse's result (errors with Parse's line numbers).
func TestParserFallsBack(t *testing.T) {
	cases := map[string]string{
		"anchor across entries": "services:\n  - &a {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n  - *a\n",
		"two documents":         "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n---\nservices: []\n",
		"unknown field":         "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\n  - name: b\n    bogus: 1\n",
		"bad port":              "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 0}]\n",
		"flow list of services": "services: [{name: a, endpoints: [{address: 10.0.0.1, port: 80}]}]\n",
		"entries at column 0":   "services:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 80}]\n- name: b\n  endpoints: [{address: 10.0.0.2, port: 80}]\nroutes: []\n",
		"comment lines inside":  "services:\n  # first\n  - name: a\n# odd comment\n    endpoints: [{address: 10.0.0.1, port: 80}]\n\n  - name: b\n    endpoints:\n    - {address: 10.0.0.2, port: 80}\n",
		"multi-line flow":       "services:\n  - {name: a,\n     endpoints: [{address: 10.0.0.1,\n port: 80}]}\nroutes: []\n",
		"duplicate services":    "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\nservices:\n  - {name: b, endpoints: [{address: 10.0.0.1, port: 80}]}\n",
		"block scalar":          "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\n    health_check:\n      http:\n        path: |\n          /healthz\n",
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			p := NewParser()
			sameAsParse(t, p, []byte(text))
			sameAsParse(t, p, []byte(text)) // with the entries remembered
		})
	}
}

// TestParserExamples: the shipped models load the same both ways.
func TestParserExamples(t *testing.T) {
	for _, f := range []string{"../examples/mesh.yaml", "../examples/mesh-compose.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p := NewParser()
		if _, err := sameAsParse(t, p, data); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		sameAsParse(t, p, data)
	}
}

// FuzzParserMatchesParse: whatever two texts are loaded one after the
// other, the Parser (remembering entries of the first) agrees with Parse.
func FuzzParserMatchesParse(f *testing.F) {
	f.Add([]byte(servicesModel(3, 80)), []byte(servicesModel(3, 81)))
	f.Add([]byte("services:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 80}]\n"), []byte("services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\n"))
	f.Add([]byte("services: # c\n  - &x {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\nroutes: []\n"), []byte("services:\n  - *x\n"))
	if data, err := os.ReadFile("../examples/mesh.yaml"); err == nil {
		f.Add(data, []byte(strings.Replace(string(data), "port: 8080", "port: 8081", 1)))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		p := NewParser()
		sameAsParse(t, p, a)
		sameAsParse(t, p, b)
	})
}

// BenchmarkReload500: loading a 500-service model after one endpoint
// changed, with Parse and with a Parser that saw the previous version.
func BenchmarkReload500(b *testing.B) {
	data := [][]byte{[]byte(servicesModel(500, 80)), []byte(servicesModel(500, 81))}
	b.Run("Parse", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := Parse(Source{Name: "m.yaml", Data: data[i%2]}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Parser", func(b *testing.B) {
		p := NewParser()
		i := 0
		for b.Loop() {
			if _, err := p.Parse(Source{Name: "m.yaml", Data: data[i%2]}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
