package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testbin"
	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
)

// churnModel is generation gen of the controlplane model the churn test
// writes: an ingress proxy in front of services a, b and c. Every generation
// changes the route config (a response header carries gen); in turn it also
// moves the a/b canary weights, changes a's endpoints, changes b's load
// balancer (CDS), and every 10th generation toggles a fault route, which adds
// or removes envoy.filters.http.fault on the listener (LDS).
func churnModel(gen int, listen string, a1, a2, b, c string) string {
	aEps := fmt.Sprintf("      - {address: 127.0.0.1, port: %s, zone: zone-a}\n", port(a1))
	if gen%4 == 1 {
		aEps += fmt.Sprintf("      - {address: 127.0.0.1, port: %s, zone: zone-a}\n", port(a2))
	}
	lb := "round_robin"
	if (gen/4)%2 == 1 {
		lb = "least_request"
	}
	wa := 50 + gen%40
	fault := ""
	if (gen/10)%2 == 1 {
		fault = `          - name: fault-probe
            match: {prefix: /fault-probe}
            route: [{service: c}]
            fault: {delay: {fixed: 1ms, percent: 100}}
`
	}
	return fmt.Sprintf(`services:
  - name: a
    endpoints:
%s  - name: b
    lb: {policy: %s}
    endpoints:
      - {address: 127.0.0.1, port: %s, zone: zone-a}
  - name: c
    endpoints:
      - {address: 127.0.0.1, port: %s, zone: zone-a}
proxies:
  - id: ingress
    role: ingress
    zone: zone-a
    listen: %s
    routes:
      - name: public
        hosts: ["*"]
        http:
%s          - name: c
            match: {prefix: /c}
            route: [{service: c}]
          - name: split
            match: {prefix: /}
            route: [{service: a, weight: %d}, {service: b, weight: %d}]
            timeout: 5s
            headers: {response: {set: {x-gen: "%d"}}}
`, aEps, lb, port(b), port(c), listen, fault, wa, 100-wa, gen)
}

func port(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

// writeAtomic replaces path in one rename, as editors and config management
// do, so the controlplane never reads half a file.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type typeState struct {
	Sent   string `json:"sent_version"`
	Acked  string `json:"acked_version"`
	NACKed string `json:"nacked_version"`
}

// cpState is the controlplane's view (/clients) of node's ADS stream: per
// type the version sent and the version the node ACKed.
func cpState(t *testing.T, admin, node string) (map[string]typeState, []json.RawMessage) {
	t.Helper()
	res, err := http.Get(admin + "/clients")
	if err != nil {
		return nil, nil
	}
	defer res.Body.Close()
	var out struct {
		Clients []struct {
			Node  string               `json:"node"`
			Types map[string]typeState `json:"types"`
		} `json:"clients"`
		NACKs []json.RawMessage `json:"nacks"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		t.Fatalf("/clients: %v", err)
	}
	var st map[string]typeState
	for _, c := range out.Clients {
		if c.Node == node {
			st = c.Types // the newest stream of the node wins
		}
	}
	return st, out.NACKs
}

// TestControlplaneChurnAndHotRestart runs the real bin/controlplane and
// bin/proxy: 100 model changes (routes, canary weights, endpoints, clusters,
// the listener) under continuous keep-alive load, each waited for until the
// proxy ACKed it, then one hot restart under the same load; zero failed
// requests throughout.
func TestControlplaneChurnAndHotRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes")
	}
	cpBin := testbin.Build(t, "./controlplane/cmd/controlplane")
	pxBin := testbin.Build(t, "./proxy/cmd/proxy")
	a1, a2, b, c := mt.StartUpstream(t, "a1"), mt.StartUpstream(t, "a2"), mt.StartUpstream(t, "b"), mt.StartUpstream(t, "c")
	listen := fmt.Sprintf("127.0.0.1:%d", mt.FreePort(t))
	dir := t.TempDir()
	model := filepath.Join(dir, "mesh.yaml")
	gen := 0
	writeAtomic(t, model, churnModel(gen, listen, a1.Addr, a2.Addr, b.Addr, c.Addr))

	xdsAddr := fmt.Sprintf("127.0.0.1:%d", mt.FreePort(t))
	cpAdmin := fmt.Sprintf("127.0.0.1:%d", mt.FreePort(t))
	start(t, cpBin, "--model", model, "--xds-addr", xdsAddr, "--admin-addr", cpAdmin, "--reload-debounce", "20ms")
	cpURL := "http://" + cpAdmin
	mt.Eventually(t, "controlplane ready", func() bool { code, _ := httpGet(cpURL + "/ready"); return code == 200 })

	pxAdmin := fmt.Sprintf("127.0.0.1:%d", mt.FreePort(t))
	sock := filepath.Join(dir, "restart.sock")
	args := []string{"--node-id", "ingress", "--cluster", "ingress", "--zone", "zone-a", "--role", "ingress",
		"--xds-addr", xdsAddr, "--admin-addr", pxAdmin, "--restart-socket", sock, "--drain-timeout", "10s", "--log-level", "warn"}
	old := start(t, pxBin, args...)
	pxURL := "http://" + pxAdmin
	mt.Eventually(t, "proxy ready", func() bool { code, _ := httpGet(pxURL + "/ready"); return code == 200 })

	// synced waits until the controlplane sent something newer than before
	// and the proxy ACKed every type it was sent.
	// synced: the proxy ACKed everything sent, and the routes are new
	// (every generation changes them; the controlplane pushes them after
	// EDS and LDS, before CDS, so a CDS change may be counted one
	// generation late). Waiting for "any type changed" raced with the push:
	// an EDS response could be sent and ACKed before that generation's
	// routes were sent.
	synced := func(before map[string]typeState) bool {
		st, _ := cpState(t, cpURL, "ingress")
		if len(st) == 0 {
			return false
		}
		if before != nil && st["RouteConfiguration"].Sent == before["RouteConfiguration"].Sent {
			return false
		}
		changed := false
		for typ, s := range st {
			if s.NACKed != "" {
				t.Fatalf("proxy NACKed %s: %+v", typ, s)
			}
			if s.Acked != s.Sent {
				return false
			}
			if before[typ].Sent != s.Sent {
				changed = true
			}
		}
		return changed
	}
	mt.Eventually(t, "initial config ACKed", func() bool { return synced(nil) })

	clients := 64
	if raceEnabled {
		clients = 16
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	lastGen := atomic.Int64{}
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			path := "/"
			if i%4 == 3 {
				path = "/c"
			}
			for ctx.Err() == nil {
				res, err := cl.Get("http://" + listen + path)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: status %d from %q", path, res.StatusCode, res.Header.Get("X-Upstream")))
					continue
				}
				if g := res.Header.Get("X-Gen"); g != "" {
					var n int64
					fmt.Sscan(g, &n)
					for {
						cur := lastGen.Load()
						if n <= cur || lastGen.CompareAndSwap(cur, n) {
							break
						}
					}
				}
				ok.Add(1)
			}
		}()
	}
	mt.Eventually(t, "load running", func() bool { return ok.Load() > 200 })

	began := time.Now()
	changes := map[string]int{} // per type: generations that sent a new version
	for gen = 1; gen <= 100; gen++ {
		before, _ := cpState(t, cpURL, "ingress")
		before = maps.Clone(before)
		writeAtomic(t, model, churnModel(gen, listen, a1.Addr, a2.Addr, b.Addr, c.Addr))
		mt.Eventually(t, fmt.Sprintf("generation %d ACKed", gen), func() bool { return synced(before) })
		after, _ := cpState(t, cpURL, "ingress")
		for typ, s := range after {
			if before[typ].Sent != s.Sent {
				changes[typ]++
			}
		}
		if f := failed.Load(); f != 0 {
			t.Fatalf("generation %d: %d failed requests; first: %v", gen, f, firstErr.Load())
		}
	}
	churn := time.Since(began)
	t.Logf("new versions per type over 100 generations: %v", changes)
	// The controlplane versions each type separately: every kind of change
	// must really have reached the proxy, the listener ones included.
	for typ, min := range map[string]int{"Listener": 9, "RouteConfiguration": 100, "Cluster": 20, "ClusterLoadAssignment": 40} {
		if changes[typ] < min {
			t.Errorf("%s changed in %d generations, want at least %d", typ, changes[typ], min)
		}
	}
	mt.Eventually(t, "the last generation serves", func() bool { return lastGen.Load() == 100 })
	if a2.Hits.Load() == 0 || b.Hits.Load() == 0 || c.Hits.Load() == 0 {
		t.Fatalf("an upstream never got traffic: a1 %d a2 %d b %d c %d", a1.Hits.Load(), a2.Hits.Load(), b.Hits.Load(), c.Hits.Load())
	}
	_, nacks := cpState(t, cpURL, "ingress")
	if len(nacks) != 0 {
		t.Fatalf("controlplane recorded NACKs: %s", nacks)
	}
	afterChurn := ok.Load()
	t.Logf("100 model changes in %s under %d connections: %d requests, 0 failures", churn.Round(time.Millisecond), clients, afterChurn)

	// Hot restart with the same command line, under the same load.
	succ := start(t, pxBin, append(args, "--restart-from", sock)...)
	if code := old.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("old proxy exit %d", code)
	}
	before := ok.Load()
	mt.Eventually(t, "load continues on the successor", func() bool { return ok.Load() > before+500 })
	if code, _ := httpGet(pxURL + "/ready"); code != 200 {
		t.Fatalf("successor admin /ready: %d", code)
	}
	cancel()
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed across the hot restart; first: %v", f, ok.Load()+f, firstErr.Load())
	}
	t.Logf("hot restart: %d more requests, 0 failures", ok.Load()-afterChurn)
	_ = succ
}
