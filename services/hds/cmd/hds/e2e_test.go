package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sidemesh/sidemesh/internal/testbin"
	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/simclient"
)

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
	return time.Since(start)
}

func get(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

type proc struct {
	cmd          *exec.Cmd
	grpc, admin  string
	gossip, name string
}

// Three real bin/hds processes; one is SIGKILLed: its proxies reconnect to
// the others and every endpoint is covered by k checkers again.
func TestProcessesReplicaKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs bin/hds")
	}
	bin := testbin.Build(t, "./services/hds/cmd/hds")
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("clusters:\n- name: web\n  health_check: {protocol: http, path: /healthz, interval: 500ms, timeout: 250ms}\n  endpoints:\n")
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - {address: 10.1.0.%d, port: 80, zone: zone-%c}\n", i+1, 'a'+i%2)
	}
	file := filepath.Join(dir, "clusters.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	snapData, _ := os.ReadFile(file)
	snap, err := catalog.ParseFile(snapData)
	if err != nil {
		t.Fatal(err)
	}

	var ps []*proc
	var seeds []string
	for i := 0; i < 3; i++ {
		p := &proc{grpc: freePort(t), admin: freePort(t), gossip: freePort(t), name: fmt.Sprintf("hds-%d", i+1)}
		seeds = append(seeds, p.gossip)
		ps = append(ps, p)
	}
	for _, p := range ps {
		p.cmd = exec.Command(bin, "--grpc-addr", p.grpc, "--admin-addr", p.admin, "--node-name", p.name,
			"--gossip-addr", p.gossip, "--join", strings.Join(seeds, ","), "--gossip-timings", "fast",
			"--gossip-label", "e2e-"+t.Name(), "--clusters-file", file, "--report-interval", "500ms", "--log-level", "warn")
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmd := p.cmd
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		})
	}
	for _, p := range ps {
		waitFor(t, 30*time.Second, p.name+" ready", func() bool { return strings.HasPrefix(get("http://"+p.admin+"/ready"), "ready") })
	}
	waitFor(t, 30*time.Second, "3 ring members", func() bool {
		for _, p := range ps {
			if !strings.Contains(get("http://"+p.admin+"/metrics"), "hds_ring_members 3") {
				return false
			}
		}
		return true
	})

	addrs := []string{ps[0].grpc, ps[1].grpc, ps[2].grpc}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var cs []*simclient.Client
	for i := 0; i < 6; i++ {
		rot := append(append([]string{}, addrs[i%3:]...), addrs[:i%3]...)
		c := &simclient.Client{Addrs: rot, Node: &corev3.Node{Id: fmt.Sprintf("proxy-%d", i), Locality: &corev3.Locality{Zone: fmt.Sprintf("zone-%c", 'a'+i%2)}}}
		cs = append(cs, c)
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	exact := func() bool {
		cov := map[string]int{}
		for _, c := range cs {
			if c.Stats().ConnectedTo == "" {
				return false
			}
			for _, k := range c.Assigned() {
				cov[k]++
			}
		}
		for _, e := range snap.Endpoints() {
			if cov[e.Key.String()] != 2 {
				return false
			}
		}
		return true
	}
	took := waitFor(t, 30*time.Second, "k=2 coverage", exact)
	t.Logf("coverage with 3 processes in %v", took.Round(time.Millisecond))
	waitFor(t, 30*time.Second, "all HEALTHY in /endpoints", func() bool {
		body := get("http://" + ps[2].admin + "/endpoints")
		return strings.Count(body, `"verdict": "HEALTHY"`) == len(snap.Endpoints())
	})
	if m := get("http://" + ps[1].admin + "/metrics"); !strings.Contains(m, "hds_checks_per_interval 40") {
		t.Fatalf("probes per interval should be k·M = 40:\n%s", grepLines(m, "hds_checks"))
	}

	if err := ps[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	took = waitFor(t, 30*time.Second, "coverage restored after SIGKILL", func() bool {
		for _, c := range cs {
			if c.Stats().ConnectedTo == ps[0].grpc {
				return false
			}
		}
		return exact()
	})
	t.Logf("SIGKILL of one of 3 replicas → k=2 coverage restored in %v", took.Round(time.Millisecond))
	waitFor(t, 30*time.Second, "survivors drop the dead replica", func() bool {
		return strings.Contains(get("http://"+ps[1].admin+"/metrics"), "hds_ring_members 2")
	})
	t.Logf("memberlist declared the killed replica dead after %v", time.Since(killed).Round(time.Millisecond))
	if a := get("http://" + ps[1].admin + "/assignments"); !strings.Contains(a, `"proxy": "proxy-0"`) {
		t.Fatalf("/assignments:\n%s", a)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
