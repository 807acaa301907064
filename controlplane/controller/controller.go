// Package controller keeps the served config in step with its inputs: the
// model file (hot-reloaded with a debounce; a bad file keeps the last good
// model) and the health feed.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/controlplane/k8ssource"
	"github.com/sidemesh/sidemesh/controlplane/model"
	"github.com/sidemesh/sidemesh/controlplane/translate"
)

// Applier serves a translation (the xDS server).
type Applier interface {
	Apply(ctx context.Context, out *translate.Output) error
}

// Controller loads, translates and applies.
type Controller struct {
	path     string
	debounce time.Duration
	log      *slog.Logger
	apply    Applier
	parser   *model.Parser // remembers service entries across reloads

	mu     sync.Mutex
	mesh   *model.Mesh
	health translate.Health
	// discovered are Kubernetes endpoints (nil when discovery is off); they
	// replace the endpoints of same-named model services at translation.
	discovered k8ssource.Snapshot
	status     Status
	// readFP fingerprints the model input Load last read (parsed or not),
	// so Watch can tell whether the file changed before it was watching.
	readFP   string
	reloads  *prometheus.CounterVec
	lastGood prometheus.Gauge
}

// Status is what /model shows.
type Status struct {
	Path        string    `json:"path"`
	LoadedAt    time.Time `json:"loaded_at,omitzero"`
	Services    int       `json:"services"`
	Proxies     int       `json:"proxies"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Unhealthy   int       `json:"unhealthy_endpoints"`
}

// New builds a controller; metrics go to reg (may be nil).
func New(path string, debounce time.Duration, log *slog.Logger, apply Applier, reg prometheus.Registerer) *Controller {
	c := &Controller{path: path, debounce: debounce, log: log, apply: apply, parser: model.NewParser(), status: Status{Path: path}}
	c.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidemesh_controlplane_model_reloads_total", Help: "Model loads by result (ok, error).",
	}, []string{"result"})
	c.lastGood = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sidemesh_controlplane_model_last_good_timestamp_seconds", Help: "When the served model was loaded.",
	})
	if reg != nil {
		reg.MustRegister(c.reloads, c.lastGood)
	}
	return c
}

// Load reads the model and serves it; on error the last good model (if any)
// stays served and the error is kept for /model.
func (c *Controller) Load(ctx context.Context) error {
	var m *model.Mesh
	start := time.Now()
	srcs, err := model.Read(c.path)
	if err == nil {
		c.mu.Lock()
		c.readFP = model.Fingerprint(srcs)
		c.mu.Unlock()
		m, err = c.parser.Parse(srcs...)
	}
	parsed := time.Now()
	if err == nil {
		c.mu.Lock()
		err = c.serve(ctx, m, c.health)
		c.mu.Unlock()
	}
	if err == nil {
		c.log.Info("model loaded", "path", c.path, "parse", parsed.Sub(start), "translate_apply", time.Since(parsed))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.reloads.WithLabelValues("error").Inc()
		c.status.LastError, c.status.LastErrorAt = err.Error(), time.Now()
		return err
	}
	c.reloads.WithLabelValues("ok").Inc()
	c.status.LastError, c.status.LastErrorAt = "", time.Time{}
	c.status.LoadedAt, c.status.Services, c.status.Proxies = time.Now(), len(m.Services), len(m.Proxies)
	c.lastGood.SetToCurrentTime()
	return nil
}

// serve translates and applies; c.mu is held.
func (c *Controller) serve(ctx context.Context, m *model.Mesh, h translate.Health) error {
	merged := m
	if c.discovered != nil {
		merged = k8ssource.Merge(m, c.discovered)
	}
	out, err := translate.Build(merged, h)
	if err != nil {
		return fmt.Errorf("translate: %w", err)
	}
	if err := c.apply.Apply(ctx, out); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	c.mesh = m
	return nil
}

// SetHealth applies health feed verdicts (only EDS changes as a result).
func (c *Controller) SetHealth(ctx context.Context, h translate.Health) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.health = h
	n := 0
	for _, st := range h {
		if st == corev3.HealthStatus_UNHEALTHY {
			n++
		}
	}
	c.status.Unhealthy = n
	if c.mesh == nil {
		return
	}
	if err := c.serve(ctx, c.mesh, h); err != nil {
		c.log.Error("applying health feed", "err", err)
	}
}

// SetDiscovered applies endpoints discovered on Kubernetes: the file model
// keeps routes and policies; same-named services take these endpoints.
func (c *Controller) SetDiscovered(ctx context.Context, snap k8ssource.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if snap == nil {
		snap = k8ssource.Snapshot{}
	}
	c.discovered = snap
	if c.mesh == nil {
		return
	}
	if err := c.serve(ctx, c.mesh, c.health); err != nil {
		c.log.Error("applying kubernetes endpoints", "err", err)
	}
}

// Status reports the model state.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Ready fails until a model is served.
func (c *Controller) Ready(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mesh == nil {
		return errors.New("no model loaded")
	}
	return nil
}

// ServeStatus is the /model admin page.
func (c *Controller) ServeStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(c.Status())
}

// Watch reloads on every change to the model file or directory: at once
// when a file is renamed into place (an atomic replace, as kubectl, the
// ConfigMap ..data swap and most tools do it), else once in-place writes
// have been quiet for the debounce interval.
func (c *Controller) Watch(ctx context.Context) error { return c.watch(ctx, nil) }

// watch is Watch; watching (tests) is called once the watch is in place.
func (c *Controller) watch(ctx context.Context, watching func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer w.Close()
	st, err := os.Stat(c.path)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	dir, base := c.path, ""
	if !st.IsDir() {
		// Watch the directory: editors and kubectl replace files by rename,
		// which drops a watch on the file itself.
		dir, base = filepath.Dir(c.path), filepath.Base(c.path)
	}
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	var timer *time.Timer
	var fire <-chan time.Time
	arm := func(d time.Duration) {
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		fire = timer.C
	}
	// A write between the last Load and Add raised no event: reload now if
	// the input is not what Load last read.
	if c.changedSinceLoad() {
		c.log.Info("model changed before the watch started; reloading", "path", c.path)
		arm(0)
	}
	// replaced: the watched name was renamed away or removed since the last
	// reload, so a file created under it may still be being written.
	replaced := false
	if watching != nil {
		watching()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			swap := isConfigMapSwap(ev.Name)
			if base != "" && filepath.Base(ev.Name) != base && !swap {
				continue
			}
			// A file renamed into place (or a ConfigMap's ..data swap) is
			// complete the moment it appears: reload at once. In-place
			// writes wait until they have been quiet for the debounce.
			if ev.Has(fsnotify.Create) && !replaced && (base != "" || swap) {
				arm(0)
				continue
			}
			named := swap || (base != "" && filepath.Base(ev.Name) == base)
			if named && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				replaced = true
			}
			arm(c.debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			c.log.Warn("model watch error", "err", err)
		case <-fire:
			fire, replaced = nil, false
			if err := c.Load(ctx); err != nil {
				c.log.Error("model reload failed; still serving the last good model", "err", err)
			}
		}
	}
}

// changedSinceLoad reports whether the model input differs from what Load
// last read (an unreadable input counts as changed: Load reports why).
func (c *Controller) changedSinceLoad() bool {
	srcs, err := model.Read(c.path)
	fp := ""
	if err == nil {
		fp = model.Fingerprint(srcs)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return fp == "" || fp != c.readFP
}

// isConfigMapSwap: Kubernetes updates a mounted ConfigMap by swapping the
// ..data symlink, never touching the file's own name.
func isConfigMapSwap(name string) bool {
	return filepath.Base(name) == "..data"
}
