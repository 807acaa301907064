// Command hds is the sidemesh health discovery service: a replicated
// envoy.service.health.v3.HealthDiscoveryService on a memberlist ring.
package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http/pprof"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/grpcserver"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/replica"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
	"github.com/sidemesh/sidemesh/services/hds/xdssource"
)

func main() { app.Main(spec()) }

func spec() app.Spec {
	return app.Spec{
		Name:      "hds",
		EnvPrefix: "HDS",
		Summary:   "sidemesh health discovery service: delegates health checks to proxies, k per endpoint, shared across a memberlist ring",
		AdminAddr: "127.0.0.1:9082",
		Flags:     flags,
		Usage: `Admin pages: /assignments (proxy → endpoints), /endpoints (endpoint → checkers, votes, verdict),
/healthz, /ready, /metrics. The health feed (sidemesh.healthfeed.v1.HealthFeed/Watch) is served
on --grpc-addr next to envoy.service.health.v3.HealthDiscoveryService.`,
		Run: run,
	}
}

func flags(fs *pflag.FlagSet) {
	host, _ := os.Hostname()
	fs.String("grpc-addr", "127.0.0.1:8082", "gRPC address (HDS and the health feed)")
	fs.String("node-name", host, "this replica's unique name in the ring")
	fs.String("gossip-addr", "127.0.0.1:7946", "memberlist bind address ip:port (UDP and TCP)")
	fs.String("gossip-advertise", "", "address peers use to reach this replica, if not --gossip-addr")
	fs.StringSlice("join", nil, "ring seeds host:port[,..] (a DNS name resolving to every replica works); retried every --rejoin-interval")
	fs.String("gossip-label", "sidemesh-hds", "ring label: rings with different labels never merge")
	fs.String("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) to encrypt gossip; empty: plaintext")
	fs.Duration("rejoin-interval", 0, "re-join the seeds this often so long partitions heal (0: 2 × gossip-to-the-dead time)")
	fs.String("gossip-timings", "local", "memberlist timers: local (memberlist's local-network timers) or fast (≈1 s failure detection)")
	fs.String("xds-addr", "", "controlplane xDS address: HDS learns clusters with health_checks over ADS (node metadata role=hds)")
	fs.String("clusters-file", "", "static clusters file instead of --xds-addr (YAML, hot-reloaded)")
	fs.String("zone", "", "this replica's zone (xDS node locality)")
	fs.Int("checkers-per-endpoint", 2, "k: proxies that check each endpoint")
	fs.Float64("load-factor", 1.5, "cap any proxy at load-factor × the mean checks per proxy (0: no cap)")
	fs.Int("max-checks-per-proxy", 0, "hard ceiling on one proxy's checks, even if endpoints then get fewer than k checkers (0: none)")
	fs.Duration("report-interval", 1_000_000_000, "how often proxies report (HealthCheckSpecifier.interval)")
	fs.Duration("stale-after", 0, "a silent proxy's votes go stale after this (0: 3 × report-interval)")
	fs.Duration("reassign-after", 0, "a silent proxy's work moves to others after this (0: 10 × report-interval)")
	fs.String("verdict-rule", string(verdict.AnyHealthy), "any-healthy (healthy if any fresh checker says so) or majority")
	fs.Bool("pprof", false, "serve /debug/pprof on the admin port")
	fs.Float64("suspect-fraction", 0.8, "a checker reporting at least this share of its endpoints down against its peers is ignored (0: off)")
	fs.Int("suspect-min", 3, "only checkers with at least this many endpoints can be suspect")
}

func run(ctx context.Context, env *app.Env) error {
	f := env.Flags
	str := func(n string) string { v, _ := f.GetString(n); return v }
	grpcAddr, name := str("grpc-addr"), str("node-name")
	if name == "" {
		return app.Usagef("--node-name must not be empty")
	}
	gh, gp, err := net.SplitHostPort(str("gossip-addr"))
	if err != nil || net.ParseIP(gh) == nil {
		return app.Usagef("--gossip-addr %q: want ip:port", str("gossip-addr"))
	}
	gport, err := strconv.Atoi(gp)
	if err != nil || gport < 0 || gport > 65535 {
		return app.Usagef("--gossip-addr %q: bad port", str("gossip-addr"))
	}
	var key []byte
	if k := str("gossip-key"); k != "" {
		key, err = base64.StdEncoding.DecodeString(k)
		if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
			return app.Usagef("--gossip-key: want base64 of 16, 24 or 32 bytes")
		}
	}
	var timings ring.Timings
	switch str("gossip-timings") {
	case "local":
		timings = ring.LocalTimings()
	case "fast":
		timings = ring.FastTimings()
	default:
		return app.Usagef("--gossip-timings %q: want local or fast", str("gossip-timings"))
	}
	rejoin, _ := f.GetDuration("rejoin-interval")
	if rejoin <= 0 {
		rejoin = 2 * timings.GossipToTheDead
	}
	seeds, _ := f.GetStringSlice("join")
	k, _ := f.GetInt("checkers-per-endpoint")
	lf, _ := f.GetFloat64("load-factor")
	maxPer, _ := f.GetInt("max-checks-per-proxy")
	ri, _ := f.GetDuration("report-interval")
	stale, _ := f.GetDuration("stale-after")
	reassign, _ := f.GetDuration("reassign-after")
	rule, err := verdict.ParseRule(str("verdict-rule"))
	if err != nil {
		return app.Usagef("--verdict-rule: %v", err)
	}
	sf, _ := f.GetFloat64("suspect-fraction")
	sm, _ := f.GetInt("suspect-min")
	if k < 1 {
		return app.Usagef("--checkers-per-endpoint must be at least 1, got %d", k)
	}
	if ri <= 0 {
		return app.Usagef("--report-interval must be positive, got %v", ri)
	}
	if lf < 0 || sf < 0 || sf > 1 || maxPer < 0 {
		return app.Usagef("--load-factor and --max-checks-per-proxy must be >= 0 and --suspect-fraction in [0,1]")
	}

	var src catalog.Source
	switch xa, cf := str("xds-addr"), str("clusters-file"); {
	case xa != "" && cf != "":
		return app.Usagef("use either --xds-addr or --clusters-file, not both")
	case cf != "":
		file, err := catalog.LoadFile(cf)
		if err != nil {
			return app.Usagef("%v", err)
		}
		file.Log = env.Log
		src = file
	case xa != "":
		src = &xdssource.Source{Addr: xa, NodeID: name, Zone: str("zone"), Log: env.Log.With("component", "xds")}
	default:
		return app.Usagef("one of --xds-addr or --clusters-file is required")
	}

	ln, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return app.Usagef("--grpc-addr %s: %v", grpcAddr, err)
	}
	rep, err := replica.New(replica.Config{
		K: k, LoadFactor: lf, MaxPerProxy: maxPer, ReportInterval: ri, StaleAfter: stale, ReassignAfter: reassign,
		Verdict: verdict.Config{Rule: rule, SuspectFraction: sf, SuspectMin: sm},
		Log:     env.Log,
		Ring: ring.Config{
			Name: name, BindAddr: gh, BindPort: gport, Advertise: str("gossip-advertise"), Seeds: seeds,
			Label: str("gossip-label"), SecretKey: key, Timings: timings, RejoinInterval: rejoin,
			Log: env.Log.With("component", "ring"),
		},
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("starting replica: %w", err)
	}
	if err := rep.Register(env.Admin.Registry()); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	for pattern, h := range rep.AdminHandlers() {
		env.Admin.HandleFunc(pattern, h)
	}
	env.Admin.AddReadyCheck("catalog", rep.Ready)
	if on, _ := f.GetBool("pprof"); on {
		env.Admin.HandleFunc("GET /debug/pprof/", pprof.Index)
		env.Admin.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}

	gs := grpcserver.New()
	server.Register(gs.Server, rep, rep)
	env.Log.Info("hds listening", "grpc", ln.Addr().String(), "gossip", rep.Ring().Addr(), "node", name, "seeds", seeds)

	return env.Serve(
		lifecycle.Func("replica", rep.Run),
		lifecycle.Func("catalog", func(ctx context.Context) error { return src.Run(ctx, rep.SetCatalog) }),
		lifecycle.Unit{
			Name:     "grpc",
			Serve:    func() error { return gs.Serve(ln) },
			Shutdown: gs.Shutdown,
		},
	)
}
