package xdsload

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The harness itself must keep up at the size (1000 clients,
// 500 services × 10 endpoints) against go-control-plane's own snapshot
// cache, so a slow controlplane run is the controlplane's, not ours.
// Extra and minutes long, so opt-in: LOADTEST_SCALE=1 go test -run Scale -v ./loadtest/xdsload
func TestScaleAgainstSnapshotCache(t *testing.T) {
	if os.Getenv("LOADTEST_SCALE") == "" {
		t.Skip("scale run (1000 clients, minutes): set LOADTEST_SCALE=1")
	}
	for _, delta := range []bool{false, true} {
		ms := startServer(t)
		path := filepath.Join(t.TempDir(), "mesh.yaml")
		m := &Model{Path: path, Services: 500, Eps: 10, Rename: true, Epoch: 7}
		if err := m.Write(); err != nil {
			t.Fatal(err)
		}
		ms.watch(t, path, 0)
		n := 1000
		if v, err := strconv.Atoi(os.Getenv("LOADTEST_SCALE_CLIENTS")); err == nil && v > 0 {
			n = v
		}
		opt := Options{Clients: n, Delta: delta, Node: Node{IDPrefix: "s", Role: "sidecar"}, Changes: 2,
			ChangeTimeout: 90 * time.Second, Initial: HasPort(m.MarkerPort())}
		start := time.Now()
		out, err := Run(context.Background(), dial(t, ms.addr, n), opt, m)
		if err != nil {
			t.Fatalf("delta=%v: %v", delta, err)
		}
		for i, c := range out.Changes {
			if len(c.Latencies) != n {
				t.Fatalf("delta=%v change %d: %d of %d clients", delta, i+1, len(c.Latencies), n)
			}
		}
		r := Summarise("x", "m", opt, out, time.Since(start))
		t.Logf("delta=%v: initial sync p50 %.0f ms max %.0f ms; change p50 %d µs p99 %d µs; bytes/change/client %.0f; total %s",
			delta, r.Values["initial_sync_p50_ms"], r.Values["initial_sync_max_ms"], r.Latency.P50, r.Latency.P99, r.Values["bytes_per_change_per_client"], time.Since(start))
	}
}
