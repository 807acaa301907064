package hdsload

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness"
	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/target"
)

// Spec is the `loadtest hds` subcommand.
func Spec() app.Spec {
	return app.Spec{
		Name: "loadtest hds", EnvPrefix: "LOADTEST_HDS",
		Summary: "N simulated HDS clients answering assigned checks from a truth table: coverage, probes per interval, load spread, convergence after a replica kill",
		Usage: `Either start the replicas yourself (all reading --clusters-file) and give --targets, or let the
harness start them from --hds-bin. With --endpoints M the clusters file is generated first.
Examples:
  loadtest hds --hds-bin bin/hds --replicas 3 --proxies 1000 --endpoints 10000 --kill
  loadtest hds --targets 127.0.0.1:18082,127.0.0.1:18182 --clusters-file clusters.yaml --proxies 100 --kill-pid 4242`,
		Flags: func(fs *pflag.FlagSet) {
			fs.StringSlice("targets", nil, "HDS replica gRPC addresses (when not using --hds-bin)")
			fs.String("hds-bin", "", "start --replicas HDS replicas from this binary on loopback")
			fs.Int("replicas", 3, "replicas to start with --hds-bin")
			fs.StringArray("hds-arg", nil, "extra flag for started replicas (repeatable), e.g. --hds-arg=--gossip-timings=fast")
			fs.String("clusters-file", "", "the replicas' --clusters-file (default with --hds-bin: a temp file)")
			fs.Int("endpoints", 0, "generate a clusters file with M endpoints (0: read --clusters-file)")
			fs.Int("clusters", 0, "clusters the generated endpoints are spread over (0: M/10)")
			fs.Duration("check-interval", time.Second, "health check interval of generated clusters")
			fs.Int("proxies", 100, "simulated HDS clients")
			fs.Int("k", 2, "checkers per endpoint the replicas use (--checkers-per-endpoint)")
			fs.Float64("unhealthy-fraction", 0.1, "share of endpoints the truth table marks unhealthy (by hash)")
			fs.String("truth", "", "truth table file: unhealthy endpoints as [cluster/]host:port lines (overrides --unhealthy-fraction)")
			fs.Duration("duration", 10*time.Second, "steady-state measuring window after full coverage")
			fs.Duration("timeout", 60*time.Second, "bound for coverage, verdicts and convergence, each")
			fs.Bool("kill", false, "with --hds-bin: SIGKILL the first replica after the steady window and measure convergence")
			fs.Int("kill-pid", 0, "SIGKILL this replica process after the steady window and measure convergence")
			fs.Bool("verdicts", true, "check the aggregated verdicts on a surviving replica's health feed")
			harness.AddOutputFlags(fs)
		},
		Run: run,
	}
}

func run(ctx context.Context, env *app.Env) error {
	fs := env.Flags
	opt := Options{Zones: []string{"zone-a", "zone-b"}}
	opt.Targets, _ = fs.GetStringSlice("targets")
	bin, _ := fs.GetString("hds-bin")
	nrep, _ := fs.GetInt("replicas")
	extra, _ := fs.GetStringArray("hds-arg")
	file, _ := fs.GetString("clusters-file")
	m, _ := fs.GetInt("endpoints")
	c, _ := fs.GetInt("clusters")
	opt.CheckInterval, _ = fs.GetDuration("check-interval")
	opt.Proxies, _ = fs.GetInt("proxies")
	opt.K, _ = fs.GetInt("k")
	frac, _ := fs.GetFloat64("unhealthy-fraction")
	truthFile, _ := fs.GetString("truth")
	opt.Steady, _ = fs.GetDuration("duration")
	opt.Timeout, _ = fs.GetDuration("timeout")
	kill, _ := fs.GetBool("kill")
	killPID, _ := fs.GetInt("kill-pid")
	withVerdicts, _ := fs.GetBool("verdicts")
	switch {
	case (bin == "") == (len(opt.Targets) == 0):
		return app.Usagef("give either --targets or --hds-bin")
	case bin != "" && (nrep < 1 || nrep > 20):
		return app.Usagef("--replicas must be in [1, 20], got %d", nrep)
	case bin == "" && file == "":
		return app.Usagef("--targets needs --clusters-file (the file the replicas read)")
	case opt.Proxies < 1 || opt.Proxies > 100000:
		return app.Usagef("--proxies must be in [1, 100000], got %d", opt.Proxies)
	case opt.K < 1:
		return app.Usagef("--k must be ≥ 1")
	case frac < 0 || frac > 1:
		return app.Usagef("--unhealthy-fraction must be in [0, 1]")
	case opt.CheckInterval <= 0 || opt.Steady <= 0 || opt.Steady > time.Hour || opt.Timeout <= 0:
		return app.Usagef("--check-interval, --duration (≤ 1h) and --timeout must be positive")
	case kill && bin == "":
		return app.Usagef("--kill needs --hds-bin (or use --kill-pid)")
	case killPID < 0:
		return app.Usagef("--kill-pid must be positive")
	}
	for _, t := range opt.Targets {
		if err := harness.CheckAddr(ctx, fs, "targets", t); err != nil {
			return err
		}
	}
	opt.Truth = FractionTruth(frac)
	if truthFile != "" {
		f, err := os.Open(truthFile)
		if err != nil {
			return app.Usagef("--truth: %v", err)
		}
		opt.Truth, err = ParseTruth(f)
		f.Close()
		if err != nil {
			return app.Usagef("--truth %s: %v", truthFile, err)
		}
	}
	tmp, err := os.MkdirTemp("", "loadtest-hds-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if file == "" {
		file = tmp + "/clusters.yaml"
	}
	var cat *Catalog
	if m > 0 {
		if c == 0 {
			c = max(1, m/10)
		}
		if cat, err = Generate(m, c, opt.CheckInterval, opt.Zones); err != nil {
			return app.Usagef("--endpoints/--clusters: %v", err)
		}
		if err := cat.Write(file); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
	} else if cat, err = ReadCatalog(file); err != nil {
		return app.Usagef("--clusters-file: %v", err)
	}
	opt.Expected = cat.Expected()

	var reps []*Replica
	var sources []target.Source
	if bin != "" {
		reps, err = StartReplicas(ctx, bin, nrep, file, tmp, append([]string{fmt.Sprintf("--checkers-per-endpoint=%d", opt.K)}, extra...))
		if err != nil {
			return err
		}
		defer StopReplicas(reps)
		opt.Targets = nil
		for _, r := range reps {
			opt.Targets = append(opt.Targets, r.GRPC)
			sources = append(sources, target.Metrics{URL: "http://" + r.Admin + "/metrics"})
		}
		if kill {
			opt.Kill = func() error { reps[0].Kill(); return nil }
		}
	} else if src, err := harness.TargetSource(ctx, fs); err != nil {
		return err
	} else if src != nil {
		sources = append(sources, src)
	}
	if killPID > 0 {
		opt.Kill = func() error { return syscall.Kill(killPID, syscall.SIGKILL) }
	}
	if withVerdicts {
		opt.VerdictAddr = opt.Targets[len(opt.Targets)-1] // never the killed one
	}

	var watches []*target.Watch
	for _, s := range sources {
		w, err := target.Start(ctx, s, 200*time.Millisecond)
		if err != nil {
			return fmt.Errorf("target cost: %w", err)
		}
		watches = append(watches, w)
	}
	began := time.Now()
	r := &report.Result{Scenario: "hds", Target: strings.Join(opt.Targets, ","), Mode: "fleet", Started: began.UTC(), Values: map[string]float64{}}
	opt.Status = harness.Status(env.Stderr)
	runErr := Run(ctx, opt, r)
	harness.ClearProgress(env.Stderr)
	elapsed := time.Since(began)
	r.ElapsedSeconds = elapsed.Seconds()
	r.Params = harness.Params(fs)
	if len(watches) > 0 {
		var cpu, peak, gossip float64
		names := []string{}
		for i, w := range watches {
			st, err := w.Stop(context.WithoutCancel(ctx))
			if err != nil {
				// A killed replica cannot be read at the end; its share is lost.
				if opt.Kill != nil && i == 0 && bin != "" {
					continue
				}
				return fmt.Errorf("target cost: %w", err)
			}
			cpu += st.CPUSeconds
			peak = max(peak, st.PeakRSSBytes)
			gossip += st.Deltas["hds_gossip_bytes_total"]
			names = append(names, st.Source)
		}
		r.Cost = &report.TargetCost{Source: strings.Join(names, " + "), CPUSeconds: cpu, CPUCores: cpu / elapsed.Seconds(), PeakRSSMiB: peak / (1 << 20)}
		if gossip > 0 {
			r.Values["gossip_bytes_per_second"] = gossip / elapsed.Seconds()
		}
	}
	if runErr != nil {
		r.AddCheck("run", false, "%v", runErr)
	}
	return harness.Emit(env, r)
}
