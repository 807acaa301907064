package reload

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

func rule(domain string) []byte {
	return []byte("domain: " + domain + "\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func counter(w *Watcher, result string) float64 {
	var m dto.Metric
	w.reloads.WithLabelValues(result).Write(&m)
	return m.GetCounter().GetValue()
}

func start(t *testing.T, path string) (*Watcher, *atomic.Pointer[rules.Config]) {
	var cur atomic.Pointer[rules.Config]
	w, err := New(path, func(c *rules.Config) { cur.Store(c) }, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w.Debounce = 20 * time.Millisecond
	if err := w.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-w.Started():
	case <-done:
		t.Fatal("watcher stopped at start")
	}
	return w, &cur
}

func TestReloadKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a.yaml")
	os.WriteFile(f, rule("one"), 0o644)
	w, cur := start(t, dir)
	os.WriteFile(f, rule("two"), 0o644)
	waitFor(t, "reload to domain two", func() bool { return cur.Load().HasDomain("two") })
	os.WriteFile(f, []byte("domain: three\nbogus: 1\n"), 0o644)
	waitFor(t, "failed reload counted", func() bool { return counter(w, "failure") >= 1 })
	if !cur.Load().HasDomain("two") {
		t.Fatal("bad reload replaced the last good rules")
	}
	os.WriteFile(filepath.Join(dir, "b.yaml"), rule("four"), 0o644)
	os.WriteFile(f, rule("three"), 0o644)
	waitFor(t, "recovery", func() bool { return cur.Load().HasDomain("three") && cur.Load().HasDomain("four") })
	if counter(w, "success") < 3 {
		t.Fatalf("success count %v", counter(w, "success"))
	}
}

func TestReloadConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mk := func(ts, domain string) {
		d := filepath.Join(dir, ts)
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "rules.yaml"), rule(domain), 0o644)
	}
	mk("..2026_01", "old")
	os.Symlink("..2026_01", filepath.Join(dir, "..data"))
	os.Symlink("..data/rules.yaml", filepath.Join(dir, "rules.yaml"))
	_, cur := start(t, dir)
	if !cur.Load().HasDomain("old") {
		t.Fatal("initial load")
	}
	// What the kubelet does: new timestamped dir, new ..data_tmp symlink, rename over ..data.
	mk("..2026_02", "new")
	os.Symlink("..2026_02", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "..2026_01"))
	waitFor(t, "ConfigMap swap reload", func() bool { return cur.Load().HasDomain("new") })
}
