package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/controlplane/healthfeed"
	"github.com/sidemesh/sidemesh/controlplane/healthfeed/feedtest"
	"github.com/sidemesh/sidemesh/controlplane/internal/xdstest"
	"github.com/sidemesh/sidemesh/controlplane/translate"
	"github.com/sidemesh/sidemesh/controlplane/xds"
	"github.com/sidemesh/sidemesh/internal/grpcserver"
	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

type rig struct {
	t    *testing.T
	ctx  context.Context
	ctl  *Controller
	addr string
	path string
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, initial string) *rig {
	t.Helper()
	return startWith(t, initial, 50*time.Millisecond)
}

func startWith(t *testing.T, initial string, debounce time.Duration) *rig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := xds.New(ctx, quiet(), prometheus.NewRegistry())
	g := grpcserver.New(xds.ServerOptions()...)
	srv.Register(g.Server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	r := &rig{t: t, ctx: ctx, addr: ln.Addr().String(), path: path}
	r.write(initial)
	r.ctl = New(path, debounce, quiet(), srv, prometheus.NewRegistry())
	if err := r.ctl.Load(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// write replaces the model file the way editors do: write aside, rename.
func (r *rig) write(body string) {
	r.t.Helper()
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		r.t.Fatal(err)
	}
}

func svcModel(addrs ...string) string {
	var b strings.Builder
	b.WriteString("services:\n  - name: svc\n    protocol: grpc\n    endpoints:\n")
	for _, a := range addrs {
		h, p := xdstest.HostPort(a)
		fmt.Fprintf(&b, "      - {address: %s, port: %d, zone: zone-a}\n", h, p)
	}
	return b.String()
}

func TestHotReloadKeepsLastGoodModel(t *testing.T) {
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	r := start(t, svcModel(a))
	go func() { _ = r.ctl.Watch(r.ctx) }()
	cc := xdstest.Client(t, r.addr, "reload-client", "svc")
	if p, err := xdstest.Call(r.ctx, cc); err != nil || p != a {
		t.Fatalf("first call: %s %v", p, err)
	}

	// A broken edit: the error names file, line and field; traffic goes on.
	r.write(svcModel(a) + "      - {address: 10.0.0.1, port: 70000}\n")
	xdstest.Eventually(t, "the reload error", func() bool { return r.ctl.Status().LastError != "" })
	st := r.ctl.Status()
	if want := r.path + ":6: services[0].endpoints[1].port: 70000 is not a port"; !strings.Contains(st.LastError, want) {
		t.Errorf("reload error %q does not contain %q", st.LastError, want)
	}
	for i := 0; i < 10; i++ {
		if p, err := xdstest.Call(r.ctx, cc); err != nil || p != a {
			t.Fatalf("call after bad reload: %s %v", p, err)
		}
	}
	if err := r.ctl.Ready(r.ctx); err != nil {
		t.Errorf("not ready after a bad reload: %v", err)
	}

	// A good edit is picked up.
	r.write(svcModel(b))
	xdstest.Eventually(t, "traffic to move to the new endpoint", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		return err == nil && p == b
	})
	if st := r.ctl.Status(); st.LastError != "" {
		t.Errorf("error kept after a good reload: %s", st.LastError)
	}
}

func TestHealthFeedDrainsUnhealthyEndpoint(t *testing.T) {
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	r := start(t, svcModel(a, b))
	bh, bp := xdstest.HostPort(b)
	feed := feedtest.Start(t, "127.0.0.1:0", &healthfeedv1.HealthUpdate{Full: true, Replica: "hds-1"})
	sub := &healthfeed.Subscriber{
		Addrs: []string{feed.Addr}, Name: "controlplane-test", Log: quiet(),
		OnChange: func(h translate.Health) { r.ctl.SetHealth(r.ctx, h) },
	}
	go func() { _ = sub.Run(r.ctx) }()

	cc := xdstest.Client(t, r.addr, "health-client", "svc")
	seen := map[string]bool{}
	xdstest.Eventually(t, "both endpoints used", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		seen[p] = err == nil
		return seen[a] && seen[b]
	})
	feed.Updates <- &healthfeedv1.HealthUpdate{Endpoints: []*healthfeedv1.EndpointHealth{
		feedtest.Endpoint("svc", bh, bp, healthfeedv1.Verdict_VERDICT_UNHEALTHY),
	}}
	xdstest.Eventually(t, "the unhealthy endpoint to be drained", func() bool {
		for i := 0; i < 20; i++ {
			if p, err := xdstest.Call(r.ctx, cc); err != nil || p == b {
				return false
			}
		}
		return true
	})
	for i := 0; i < 100; i++ {
		if p, _ := xdstest.Call(r.ctx, cc); p != a {
			t.Fatalf("call %d went to %s after it was marked unhealthy", i, p)
		}
	}
	if r.ctl.Status().Unhealthy != 1 {
		t.Errorf("status: %+v", r.ctl.Status())
	}
	// Healthy again: traffic returns.
	feed.Updates <- &healthfeedv1.HealthUpdate{Endpoints: []*healthfeedv1.EndpointHealth{
		feedtest.Endpoint("svc", bh, bp, healthfeedv1.Verdict_VERDICT_HEALTHY),
	}}
	xdstest.Eventually(t, "traffic back on the recovered endpoint", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		return err == nil && p == b
	})
}

// A write after the initial Load but before Watch has added its fsnotify
// watch raises no event; Watch must still pick it up.
func TestWriteBeforeWatchIsNotLost(t *testing.T) {
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	r := start(t, svcModel(a))
	r.write(svcModel(b)) // the model changes before anyone watches
	go func() { _ = r.ctl.Watch(r.ctx) }()
	cc := xdstest.Client(t, r.addr, "race-client", "svc")
	xdstest.Eventually(t, "traffic to reach the endpoint written before the watch", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		return err == nil && p == b
	})
}

// A file renamed into place is complete: it is served without waiting out
// the debounce (an hour here), which only in-place writes need.
func TestAtomicReplaceSkipsDebounce(t *testing.T) {
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	r := startWith(t, svcModel(a), time.Hour)
	w := make(chan struct{})
	go func() { _ = r.ctl.watch(r.ctx, func() { close(w) }) }()
	<-w
	cc := xdstest.Client(t, r.addr, "atomic-client", "svc")
	if p, err := xdstest.Call(r.ctx, cc); err != nil || p != a {
		t.Fatalf("first call: %s %v", p, err)
	}
	r.write(svcModel(b))
	xdstest.Eventually(t, "traffic to move without waiting out the debounce", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		return err == nil && p == b
	})
}

// A mounted ConfigMap is updated the way kubelet's atomic writer does it: a
// new timestamped directory, a ..data_tmp symlink to it, renamed over
// ..data; the model file is a symlink through ..data and never changes
// itself. The swap is atomic, so it is served without waiting out the
// debounce (an hour here).
func TestConfigMapSwapSkipsDebounce(t *testing.T) {
	a, b := xdstest.Backend(t), xdstest.Backend(t)
	dir := t.TempDir()
	version := func(name, body string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "mesh.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_12_03_1", svcModel(a))
	if err := os.Symlink(filepath.Join("..data", "mesh.yaml"), filepath.Join(dir, "mesh.yaml")); err != nil {
		t.Fatal(err)
	}

	r := startWith(t, svcModel(a), time.Hour)
	r.ctl = New(filepath.Join(dir, "mesh.yaml"), time.Hour, quiet(), r.ctl.apply, prometheus.NewRegistry())
	if err := r.ctl.Load(r.ctx); err != nil {
		t.Fatal(err)
	}
	w := make(chan struct{})
	go func() { _ = r.ctl.watch(r.ctx, func() { close(w) }) }()
	<-w
	cc := xdstest.Client(t, r.addr, "configmap-client", "svc")
	if p, err := xdstest.Call(r.ctx, cc); err != nil || p != a {
		t.Fatalf("first call: %s %v", p, err)
	}
	version("..2026_12_03_2", svcModel(b))
	xdstest.Eventually(t, "traffic to move after the ..data swap", func() bool {
		p, err := xdstest.Call(r.ctx, cc)
		return err == nil && p == b
	})
}
