package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
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
	return startOptions(t, path, rules.Options{})
}

func startOptions(t *testing.T, path string, o rules.Options) (*Watcher, *atomic.Pointer[rules.Config]) {
	var cur atomic.Pointer[rules.Config]
	w, err := New(path, func(c *rules.Config) { cur.Store(c) }, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w.Debounce = 20 * time.Millisecond
	w.Options = o
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

func limitOf(c *rules.Config, domain, key string) uint32 {
	l := c.Match(domain, []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: "v"}})
	if l == nil {
		return 0
	}
	return l.RequestsPerUnit
}

// TestReloadMergedDomain: with Options.MergeDomains the first load and every
// reload merge the files of one domain; a merged set with the same top-level
// descriptor in two files is refused and the last good rules stay.
func TestReloadMergedDomain(t *testing.T) {
	dir := t.TempDir()
	lim := func(key string, n int) []byte {
		return []byte(fmt.Sprintf("domain: shared\ndescriptors:\n  - key: %s\n    rate_limit: {unit: second, requests_per_unit: %d}\n", key, n))
	}
	os.WriteFile(filepath.Join(dir, "a.yaml"), lim("a", 1), 0o644)
	os.WriteFile(filepath.Join(dir, "b.yaml"), lim("b", 2), 0o644)

	off, err := New(dir, func(*rules.Config) {}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Load(); err == nil || !strings.Contains(err.Error(), `duplicate domain "shared"`) {
		t.Fatalf("without merging: %v", err)
	}

	w, cur := startOptions(t, dir, rules.Options{MergeDomains: true})
	if a, b := limitOf(cur.Load(), "shared", "a"), limitOf(cur.Load(), "shared", "b"); a != 1 || b != 2 {
		t.Fatalf("initial merged load: a=%d b=%d", a, b)
	}
	// c.yaml repeats b.yaml's top-level descriptor: refused.
	os.WriteFile(filepath.Join(dir, "c.yaml"), lim("b", 3), 0o644)
	waitFor(t, "failed merged reload counted", func() bool { return counter(w, "failure") >= 1 })
	if a, b := limitOf(cur.Load(), "shared", "a"), limitOf(cur.Load(), "shared", "b"); a != 1 || b != 2 {
		t.Fatalf("bad merged set replaced the last good rules: a=%d b=%d", a, b)
	}
	os.WriteFile(filepath.Join(dir, "c.yaml"), lim("c", 3), 0o644)
	waitFor(t, "merged reload with c.yaml", func() bool { return limitOf(cur.Load(), "shared", "c") == 3 })
	if a, b := limitOf(cur.Load(), "shared", "a"), limitOf(cur.Load(), "shared", "b"); a != 1 || b != 2 {
		t.Fatalf("after reload: a=%d b=%d", a, b)
	}
}
