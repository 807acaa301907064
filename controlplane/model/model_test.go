package model

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestLoadExample(t *testing.T) {
	m, err := Load("../examples/mesh.yaml")
	if err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	if len(m.Services) != 3 || len(m.Proxies) != 3 || len(m.Routes) != 1 {
		t.Fatalf("unexpected shape: %d services, %d proxies, %d routes", len(m.Services), len(m.Proxies), len(m.Routes))
	}
	web := m.Services[0]
	if web.Name != "web" || web.Endpoints[0].Port != 15101 || web.Endpoints[0].Weight != 1 {
		t.Errorf("web service: %+v", web)
	}
	if web.HealthCheck.Interval != 2*time.Second || web.HealthCheck.Path != "/healthz" {
		t.Errorf("web health check: %+v", web.HealthCheck)
	}
	// defaults are filled in
	if m.Services[2].ConnectTimeout != time.Second || m.Services[2].LB.Policy != LBRoundRobin {
		t.Errorf("rls defaults: %+v", m.Services[2])
	}
	ing := m.Proxies[2]
	if ing.Role != RoleIngress || ing.Routes[0].HTTP[0].RateLimits[0].Actions[0].RequestHeaders.Key != "user" {
		t.Errorf("ingress: %+v", ing)
	}
}

func parseErr(t *testing.T, yaml string) string {
	t.Helper()
	_, err := Parse(Source{Name: "m.yaml", Data: []byte(yaml)})
	if err == nil {
		t.Fatalf("no error for:\n%s", yaml)
	}
	return err.Error()
}

func TestErrorsNameFileLineField(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown field", "services:\n  - name: a\n    bogus: 1\n", "m.yaml:3: field bogus not found"},
		{"bad port", "services:\n  - name: a\n    endpoints:\n      - address: 10.0.0.1\n        port: 0\n", "m.yaml:5: services[0].endpoints[0].port: 0 is not a port"},
		{"missing endpoints", "services:\n  - name: a\n", "m.yaml:2: services[0].endpoints: a service needs endpoints or dns"},
		{"unknown service in route", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - name: r\n    hosts: [a]\n    http:\n      - route:\n          - service: nope\n", "m.yaml:9: routes[0].http[0].route[0].service: unknown service \"nope\""},
		{"bad regex", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - name: r\n    hosts: [a]\n    http:\n      - match: {regex: \"(\"}\n        route: [{service: a}]\n", "routes[0].http[0].match.regex: bad regex"},
		{"type error", "services:\n  - name: a\n    endpoints:\n      - address: 10.0.0.1\n        port: eighty\n", "m.yaml:5: cannot unmarshal"},
		{"rate limit without service", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - name: r\n    hosts: [a]\n    http:\n      - route: [{service: a}]\n        rate_limits: [{actions: [{remote_address: {}}]}]\n", "needs a top-level rate_limit_service"},
		{"duplicate host", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - {name: r1, hosts: [a], http: [{route: [{service: a}]}]}\n  - {name: r2, hosts: [A], http: [{route: [{service: a}]}]}\n", "already served by virtual host \"r1\""},
		{"sidecar without inbound", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nproxies:\n  - id: p\n    role: sidecar\n    service: a\n    outbound: {listen: 127.0.0.1:1}\n", "m.yaml:5: proxies[0].inbound: a sidecar needs an inbound listener"},
		{"bad duration", "services:\n  - name: a\n    connect_timeout: soon\n    endpoints: [{address: 10.0.0.1, port: 80}]\n", "m.yaml:3:"},
		{"syntax", "services: [\n", "m.yaml:"},
		{"two documents", "services: []\n---\nproxies: []\n", "more than one YAML document"},
		{"tcp listener for an http service", "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n  - {name: db, protocol: tcp, endpoints: [{address: 10.0.0.2, port: 5432}]}\nproxies:\n  - id: p\n    role: sidecar\n    service: a\n    inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    outbound:\n      listen: 127.0.0.1:3\n      tcp:\n        - {service: a, listen: 127.0.0.1:4}\n", "m.yaml:12: proxies[0].outbound.tcp[0].service: service \"a\" speaks http; only tcp services get a tcp listener"},
		{"tcp listener on the outbound port", "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n  - {name: db, protocol: tcp, endpoints: [{address: 10.0.0.2, port: 5432}]}\nproxies:\n  - id: p\n    role: sidecar\n    service: a\n    inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    outbound:\n      listen: 127.0.0.1:3\n      tcp:\n        - {service: db, listen: 127.0.0.1:3}\n", "m.yaml:12: proxies[0].outbound.tcp[0].listen: 127.0.0.1:3 is also the outbound listener"},
		{"tcp listener twice", "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n  - {name: db, protocol: tcp, endpoints: [{address: 10.0.0.2, port: 5432}]}\nproxies:\n  - id: p\n    role: sidecar\n    service: a\n    inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    outbound:\n      listen: 127.0.0.1:3\n      tcp:\n        - {service: db, listen: 127.0.0.1:4}\n        - {service: db, listen: 127.0.0.1:5}\n", "proxies[0].outbound.tcp[1].service: service \"db\" has a tcp listener already"},
		{"tcp listener for an unknown service", "services:\n  - {name: a, endpoints: [{address: 10.0.0.1, port: 80}]}\n  - {name: db, protocol: tcp, endpoints: [{address: 10.0.0.2, port: 5432}]}\nproxies:\n  - id: p\n    role: sidecar\n    service: a\n    inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    outbound:\n      listen: 127.0.0.1:3\n      tcp:\n        - {service: nope, listen: 127.0.0.1:4}\n", "proxies[0].outbound.tcp[0].service: unknown service \"nope\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := parseErr(t, c.yaml); !strings.Contains(got, c.want) {
				t.Errorf("error %q does not contain %q", got, c.want)
			}
		})
	}
}

func TestDirectoryMergeLocatesFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\n")
	write("b.yaml", "# routes\nservices:\n  - name: b\n    endpoints: [{address: 10.0.0.2, port: 80}]\nroutes:\n  - name: r\n    hosts: [a]\n    http: [{route: [{service: a, weight: 90}, {service: b, weight: 10}]}]\n")
	write("ignored.txt", "not yaml: [")
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Services) != 2 || m.Routes[0].HTTP[0].Route[1].Service != "b" {
		t.Fatalf("merge: %+v", m)
	}
	write("c.yml", "services:\n  - name: c\n    endpoints:\n      - {address: nope, port: 80}\n")
	_, err = Load(dir)
	var me *Error
	if !errors.As(err, &me) {
		t.Fatalf("want *Error, got %v", err)
	}
	if me.File != filepath.Join(dir, "c.yml") || me.Line != 4 || me.Field != "services[2].endpoints[0].address" {
		t.Errorf("located as %s:%d %s", me.File, me.Line, me.Field)
	}
	write("c.yml", "services:\n  - name: a\n    endpoints: [{address: 10.0.0.9, port: 80}]\n")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "c.yml:2: services[2].name: service \"a\" is defined twice") {
		t.Errorf("duplicate across files: %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Fatal("no error for a missing file")
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no *.yaml") {
		t.Fatalf("empty dir: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../examples/mesh.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\n"))
	f.Add([]byte("routes: [{name: r, hosts: ['*'], http: [{match: {regex: '[a-'}}]}]"))
	f.Add([]byte("proxies: [{id: x, role: ingress, listen: '[::1]:80', routes: []}]"))
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte("services: &a [*a]"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(Source{Name: "f.yaml", Data: data})
		if err == nil && m == nil {
			t.Fatal("nil model without error")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
		// Parsing once must be as strict as yaml.v3's strict decoder.
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if serr := dec.Decode(&Mesh{}); serr != nil && !errors.Is(serr, io.EOF) && err == nil {
			t.Fatalf("the strict decoder rejects what Parse accepts: %v", serr)
		}
	})
}

// The model is parsed once and checked for unknown fields by walking the
// YAML tree; the errors must be the ones yaml.v3's strict decoder gives.
func TestUnknownFieldsMatchStrictDecoder(t *testing.T) {
	cases := []string{
		"bogus: 1\nservices: []\n",
		"services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80, zonee: z}]\n    lb: {policy: ring_hash, hash_on: {header: x, nope: 1}}\n",
		"services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - name: r\n    hosts: [a]\n    http:\n      - match: {prefix: /, headers: [{name: x, exact: y, exakt: z}]}\n        route: [{service: a}]\n        headers: {request: {set: {a: b}, sett: {}}}\n",
		"services:\n  - &s {name: a, endpoints: [{address: 10.0.0.1, port: 80}], nope: 1}\n  - <<: *s\n    name: b\n    also: 2\n",
		"services:\n  - name: a\n    extra: 1\n    endpoints:\n      - address: 10.0.0.1\n        port: eighty\n",
		"proxies:\n  - id: p\n    role: sidecar\n    inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2, bogus: 3}\n",
	}
	for i, doc := range cases {
		dec := yaml.NewDecoder(strings.NewReader(doc))
		dec.KnownFields(true)
		var strictErr error
		if err := dec.Decode(&Mesh{}); err != nil {
			strictErr = yamlError("m.yaml", err)
		}
		if strictErr == nil {
			t.Fatalf("case %d: the strict decoder found nothing wrong", i)
		}
		_, err := Parse(Source{Name: "m.yaml", Data: []byte(doc)})
		if err == nil {
			t.Fatalf("case %d: no error, strict decoder says %v", i, strictErr)
		}
		if got, want := sortedLines(err.Error()), sortedLines(strictErr.Error()); got != want {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

func sortedLines(s string) string {
	l := strings.Split(s, "\n")
	sort.Strings(l)
	return strings.Join(l, "\n")
}
