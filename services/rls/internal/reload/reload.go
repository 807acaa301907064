// Package reload watches the rules path and applies a new rule set whenever
// the files change; a bad set is rejected and the last good one stays.
package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// Watcher reloads rules on change.
type Watcher struct {
	Path  string
	Apply func(*rules.Config)
	Log   *slog.Logger
	// Debounce groups bursts of events (editors, ConfigMap swaps) into one reload.
	Debounce time.Duration
	// Options apply to every load, the first and each reload (e.g.
	// MergeDomains for --merge-domain-config).
	Options rules.Options

	reloads *prometheus.CounterVec
	lastOK  prometheus.Gauge
	started chan struct{}
}

// Started is closed once Run watches the path.
func (w *Watcher) Started() <-chan struct{} { return w.started }

// New registers the reload metrics.
func New(path string, apply func(*rules.Config), log *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
	w := &Watcher{
		Path: path, Apply: apply, Log: log, Debounce: 100 * time.Millisecond, started: make(chan struct{}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rls_rules_reloads_total", Help: "Rule reloads by result (success, failure).",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rls_rules_last_success_timestamp_seconds", Help: "When rules were last loaded successfully.",
		}),
	}
	for _, c := range []prometheus.Collector{w.reloads, w.lastOK} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("reload metrics: %w", err)
		}
	}
	w.reloads.WithLabelValues("success")
	w.reloads.WithLabelValues("failure")
	return w, nil
}

// Load loads and applies the rules once (at start: an error is fatal there).
func (w *Watcher) Load() error {
	c, err := rules.LoadOptions(w.Path, w.Options)
	if err != nil {
		w.reloads.WithLabelValues("failure").Inc()
		return err
	}
	w.Apply(c)
	w.reloads.WithLabelValues("success").Inc()
	w.lastOK.SetToCurrentTime()
	w.Log.Info("rules loaded", "path", w.Path, "files", len(c.Files), "domains", len(c.Domains()), "merge_domains", w.Options.MergeDomains)
	return nil
}

// Run watches until ctx ends. It watches the directory (or a file's parent
// directory), so renames, symlink swaps (Kubernetes ConfigMap "..data") and
// editors' write-and-rename all trigger a reload.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching rules: %w", err)
	}
	defer fw.Close()
	dir := w.Path
	if st, err := os.Stat(w.Path); err == nil && !st.IsDir() {
		dir = filepath.Dir(w.Path)
	}
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watching rules %s: %w", dir, err)
	}
	close(w.started)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			w.Log.Debug("rules changed", "event", ev.String())
			timer.Reset(w.Debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.Log.Warn("rules watcher error", "err", err)
		case <-timer.C:
			if err := w.Load(); err != nil {
				w.Log.Error("rules reload failed; keeping the last good rules", "err", err)
			}
		}
	}
}
