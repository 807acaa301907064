// Command proxy is the sidemesh xDS-driven L7 proxy.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
	"github.com/sidemesh/sidemesh/proxy/bootstrap"
	"github.com/sidemesh/sidemesh/proxy/fault"
	"github.com/sidemesh/sidemesh/proxy/hdsclient"
	"github.com/sidemesh/sidemesh/proxy/hotrestart"
	"github.com/sidemesh/sidemesh/proxy/localratelimit"
	"github.com/sidemesh/sidemesh/proxy/ratelimit"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

func main() {
	app.Main(app.Spec{
		Name:      "proxy",
		EnvPrefix: "PROXY",
		Summary:   "sidemesh xDS-driven L7 proxy",
		AdminAddr: "127.0.0.1:15000",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("node-id", "", "node id sent to the control plane (required unless --bootstrap)")
			fs.String("cluster", "", "node cluster (the service this proxy belongs to)")
			fs.String("zone", "", "node locality zone")
			fs.String("role", "sidecar", "node role: sidecar or ingress")
			fs.String("service", "", "service name in node metadata (defaults to --cluster)")
			fs.String("xds-addr", "", "control plane ADS address host:port (required unless --bootstrap)")
			fs.String("hds-addr", "", "health discovery service address host:port: run the HDS client (default: the bootstrap's hds_config)")
			fs.String("bootstrap", "", "Envoy-style bootstrap YAML/JSON (node, ads_config, static xds cluster); replaces the node/xds flags")
			fs.Bool("xds-sotw", false, "use state-of-the-world ADS instead of delta")
			fs.Bool("rls-unary", false, "call RLS with one unary ShouldRateLimit per request, as Envoy does, instead of sidemesh's batch stream (which falls back to unary by itself against an RLS without it)")
			fs.Int("rls-batch-streams", 2, "RLS batch streams per RLS cluster (each lands on one endpoint, round robin)")
			fs.String("access-log", "", "JSON access log: a file path or - for stdout (off when empty)")
			fs.String("restart-from", "", "hot restart: unix socket of the running proxy to take listeners from")
			fs.String("restart-socket", "", "hot restart: unix socket this proxy offers its listeners on")
		},
		AdminListener: takeOver,
		Run:           run,
	})
}

// adminKey names the admin socket among the hot-restart listeners; data
// listeners are keyed by their configured address.
const adminKey = "admin:"

// Sockets taken from the previous process by takeOver, for run.
var (
	inherited map[string]net.Listener
	handoff   *hotrestart.Handoff
)

// takeOver runs before the admin server binds: with --restart-from it takes
// every listening socket of the running proxy, the admin one included, so
// the successor runs with the same command line.
func takeOver(fs *pflag.FlagSet, addr string) (net.Listener, error) {
	p, _ := fs.GetString("restart-from")
	if p == "" {
		return nil, nil
	}
	ls, h, err := hotrestart.Take(p)
	if err != nil {
		return nil, fmt.Errorf("hot restart: %w", err)
	}
	inherited, handoff = ls, h
	var adm net.Listener
	for k, l := range ls {
		if !strings.HasPrefix(k, adminKey) {
			continue
		}
		delete(ls, k)
		if strings.TrimPrefix(k, adminKey) == addr {
			adm = l
		} else {
			l.Close() // a different --admin-addr: bind our own
		}
	}
	return adm, nil
}

func run(ctx context.Context, env *app.Env) error {
	if os.Getenv("GOGC") == "" {
		// The live heap is small and steady; collecting less often saves a
		// few percent of CPU per request for a few MiB.
		debug.SetGCPercent(400)
	}
	get := func(n string) string { v, _ := env.Flags.GetString(n); return v }
	sotw, _ := env.Flags.GetBool("xds-sotw")
	rlsUnary, _ := env.Flags.GetBool("rls-unary")
	rlsStreams, _ := env.Flags.GetInt("rls-batch-streams")
	if rlsStreams < 1 {
		return app.Usagef("--rls-batch-streams must be at least 1, got %d", rlsStreams)
	}
	var bc *bootstrap.Config
	var err error
	if path := get("bootstrap"); path != "" {
		bc, err = bootstrap.Load(path)
		if err == nil && env.Flags.Changed("xds-sotw") {
			bc.SotW = sotw
		}
		if err == nil && bc.AdminAddr != "" && bc.AdminAddr != env.AdminAddr() {
			env.Log.Warn("bootstrap admin.address is ignored; set --admin-addr", "bootstrap_admin", bc.AdminAddr, "admin", env.AdminAddr())
		}
	} else {
		svc := get("service")
		if svc == "" {
			svc = get("cluster")
		}
		bc, err = bootstrap.FromFlags(get("node-id"), get("cluster"), get("zone"), get("role"), svc, get("xds-addr"), sotw)
	}
	if err != nil {
		return app.Usagef("%v", err)
	}
	var accessLog io.Writer
	switch p := get("access-log"); p {
	case "":
	case "-":
		accessLog = env.Stdout
	default:
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return app.Usagef("--access-log %s: %v", p, err)
		}
		defer f.Close()
		accessLog = f
	}
	if handoff != nil {
		env.Log.Info("hot restart: took listeners", "count", len(inherited), "from", get("restart-from"), "admin", env.AdminAddr())
	}

	m := stats.New(env.Admin.Registry())
	routeOf := server.ResolvedRoute
	var px *server.Proxy
	rlf := ratelimit.NewFactory(ratelimit.FactoryOptions{Ctx: ctx, RouteOf: routeOf, LocalCluster: bc.Node.GetCluster(),
		Registerer: env.Admin.Registry(), Log: env.Log,
		Endpoints: func(cluster string) []string { return px.HostAddrs(cluster) },
		Unary:     rlsUnary, Batch: ratelimit.BatchOptions{Streams: rlsStreams}})
	ff := &fault.Factory{RouteOf: func(r *http.Request) (*routev3.Route, string) { _, rt, c, _ := routeOf(r); return rt, c }}
	lf := &localratelimit.Factory{RouteOf: func(r *http.Request) *routev3.Route { _, rt, _, _ := routeOf(r); return rt }}
	filters := map[string]server.FilterFactory{ratelimit.TypeURL: rlf.Build, fault.TypeURL: ff.Build, localratelimit.TypeURL: lf.Build}
	// Per-route config types the filters read besides their filter types.
	perRoute := []string{"type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"}
	px = server.New(server.Options{Filters: filters, PerRouteTypes: perRoute, Log: env.Log, Metrics: m, DrainTimeout: env.DrainTimeout(), AccessLog: accessLog, Inherited: inherited})
	xc := xds.New(xds.Config{Addr: bc.XDSAddr, Node: bc.Node, SotW: bc.SotW, Log: env.Log,
		OnResult: func(typ string, err error) {
			if err != nil {
				m.XDS(typ, "nack")
			} else {
				m.XDS(typ, "ack")
			}
		}}, px)

	ready := func() bool { return bc.Static != nil || xc.Ready() }
	adm := env.Admin
	adm.AddReadyCheck("xds", func(context.Context) error {
		if !ready() {
			return errors.New("waiting for first listeners and clusters from " + bc.XDSAddr)
		}
		return nil
	})
	adm.Handle("GET /stats/prometheus", promhttp.HandlerFor(adm.Registry(), promhttp.HandlerOpts{}))
	adm.HandleFunc("GET /config_dump", px.ConfigDump(func() any { return xc.Status() }))
	adm.HandleFunc("GET /clusters", px.Clusters)
	adm.HandleFunc("GET /debug/pprof/", pprof.Index)
	adm.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	adm.HandleFunc("POST /drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		adm.SetDraining()
		go px.DrainListeners()
		fmt.Fprintln(w, "OK")
	})
	adm.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "OK")
		go syscall.Kill(os.Getpid(), syscall.SIGTERM) // the normal drain-and-exit path
	})

	var xdsUnit lifecycle.Unit
	if bc.Static != nil {
		// Static mode: the bootstrap's listeners and clusters, no control plane.
		if err := px.Apply(ctx, bc.Static); err != nil {
			return app.Usagef("bootstrap static_resources: %v", err)
		}
		xdsUnit = lifecycle.Func("static", func(c context.Context) error { <-c.Done(); return nil })
	} else {
		xdsUnit = lifecycle.Func("xds", xc.Run)
	}
	units := []lifecycle.Unit{
		xdsUnit,
		{Name: "proxy", Serve: func() error { <-ctx.Done(); return nil }, Shutdown: px.Shutdown},
	}
	if handoff != nil {
		units = append(units, lifecycle.Func("hot-restart-handoff", func(hctx context.Context) error {
			// Tell the old process to drain once our listeners serve.
			for !ready() {
				select {
				case <-hctx.Done():
					return nil
				case <-time.After(20 * time.Millisecond):
				}
			}
			if err := handoff.Done(); err != nil {
				env.Log.Warn("hot restart handoff", "err", err)
			} else {
				env.Log.Info("hot restart: previous process is draining")
			}
			<-hctx.Done()
			return nil
		}))
	}
	if p := get("restart-socket"); p != "" {
		listeners := func() map[string]net.Listener {
			ls := px.Listeners()
			if al := env.AdminListener(); al != nil {
				ls[adminKey+get("admin-addr")] = al
			}
			return ls
		}
		hs := &hotrestart.Server{Path: p, Listeners: listeners, OnHandoff: func() {
			env.Log.Info("hot restart: successor ready, draining")
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}}
		units = append(units, lifecycle.Func("hot-restart", func(hctx context.Context) error {
			if handoff != nil {
				// Our predecessor owns the path until it confirms the drain.
				for !ready() {
					select {
					case <-hctx.Done():
						return nil
					case <-time.After(50 * time.Millisecond):
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			return hs.Serve(hctx)
		}))
	}
	hdsAddr := get("hds-addr")
	if hdsAddr == "" && bc.HDSAddr != "" {
		// The bootstrap's hds_config, as Envoy reads it.
		hdsAddr = bc.HDSAddr
	} else if hdsAddr != "" && bc.HDSAddr != "" && hdsAddr != bc.HDSAddr {
		env.Log.Warn("--hds-addr overrides the bootstrap's hds_config", "hds_addr", hdsAddr, "bootstrap_hds", bc.HDSAddr)
	}
	if addr := hdsAddr; addr != "" {
		// Issue 7: run the health checks HDS delegates to this proxy.
		hc, err := hdsclient.New(hdsclient.Config{Addr: addr, Node: bc.Node, Log: env.Log.With("component", "hds"), Registerer: adm.Registry()})
		if err != nil {
			return fmt.Errorf("hds client: %w", err)
		}
		adm.Handle("GET /hds", hc)
		units = append(units, lifecycle.Func("hds", hc.Run))
	}
	return env.Serve(units...)
}
