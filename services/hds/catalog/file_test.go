package catalog

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const sample = `
clusters:
- name: web
  health_check: {protocol: http, path: /healthz, interval: 1s, timeout: 500ms, unhealthy_threshold: 2}
  endpoints:
  - {address: 127.0.0.2, port: 80, zone: zone-b}
  - {address: 127.0.0.1, port: 80, zone: zone-a}
- name: db
  health_check: {protocol: tcp}
  endpoints:
  - {address: "::ffff:10.0.0.1", port: 5432}
`

func TestParseFile(t *testing.T) {
	s, err := ParseFile([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Clusters) != 2 || s.Clusters[0].Name != "db" || s.Clusters[1].Name != "web" {
		t.Fatalf("clusters not sorted: %+v", s.Clusters)
	}
	web, ok := s.Cluster("web")
	if !ok || web.Protocol != HTTP || web.Endpoints[0].Key.Address != "127.0.0.1" || web.Endpoints[0].Zone() != "zone-a" {
		t.Fatalf("web = %+v", web)
	}
	if got := web.HealthCheck.GetNoTrafficInterval().AsDuration(); got != time.Second {
		t.Errorf("no_traffic_interval = %v, want the check interval 1s", got)
	}
	db, _ := s.Cluster("db")
	if db.Protocol != TCP || db.Endpoints[0].Key.Address != "10.0.0.1" {
		t.Errorf("db = %+v (mapped IPv4 must be unmapped)", db.Endpoints)
	}
	if n := len(s.Endpoints()); n != 3 {
		t.Errorf("endpoints = %d", n)
	}
}

func TestParseFileErrors(t *testing.T) {
	cases := map[string]string{
		"clusters[0].name: must not be empty":           "clusters: [{endpoints: []}]",
		"not an IP literal":                             "clusters: [{name: a, endpoints: [{address: web.local, port: 1}]}]",
		"endpoints[0].port: 0":                          "clusters: [{name: a, endpoints: [{address: 1.2.3.4}]}]",
		"duplicate cluster name":                        "clusters: [{name: a}, {name: a}]",
		`protocol "udp"`:                                "clusters: [{name: a, health_check: {protocol: udp}}]",
		"field bogus not found":                         "clusters: [{name: a, bogus: 1}]",
		"expected_statuses range [700,800)":             "clusters: [{name: a, health_check: {expected_statuses: [[700, 800]]}}]",
		"duplicate endpoint a/1.2.3.4:1":                "clusters: [{name: a, endpoints: [{address: 1.2.3.4, port: 1}, {address: 1.2.3.4, port: 1}]}]",
		"interval, timeout and initial_jitter must not": "clusters: [{name: a, health_check: {timeout: -1s}}]",
		"file is empty":                                 " \n",
	}
	for want, in := range cases {
		_, err := ParseFile([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseFile(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestFileSourceReloadKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clusters.yaml")
	if err := os.WriteFile(path, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Poll = 20 * time.Millisecond
	got := make(chan *Snapshot, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx, func(s *Snapshot) { got <- s }) }()
	defer func() { cancel(); <-done }()
	if s := <-got; len(s.Clusters) != 2 {
		t.Fatalf("first snapshot %+v", s)
	}
	if err := os.WriteFile(path, []byte("clusters: [{name: ''}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("clusters: [{name: only}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if len(s.Clusters) != 1 || s.Clusters[0].Name != "only" {
			t.Fatalf("reloaded snapshot %+v", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no reload")
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("clusters: [{name: a, health_check: {protocol: grpc, service_name: x}, endpoints: [{address: '::1', port: 9}]}]"))
	f.Add([]byte("clusters: [{name: a, health_check: {expected_statuses: [[200, 100]]}}]"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseFile(data)
		if err != nil {
			return
		}
		for _, c := range s.Clusters {
			if err := c.HealthCheck.ValidateAll(); err != nil {
				t.Fatalf("accepted an invalid check: %v", err)
			}
			for _, e := range c.Endpoints {
				_ = e.Key.String()
			}
		}
	})
}
