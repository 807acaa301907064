package hdsload

import (
	"context"
	"fmt"
	"time"

	"github.com/sidemesh/sidemesh/loadtest/report"
)

// Options shape an HDS fleet run.
type Options struct {
	Targets       []string // HDS replica gRPC addresses
	Proxies       int
	Zones         []string
	K             int // checkers per endpoint the replicas are configured with
	Expected      map[Key]bool
	Truth         Truth
	CheckInterval time.Duration // the catalog's check interval
	Steady        time.Duration // measuring window once covered
	Timeout       time.Duration // for coverage, verdicts and convergence
	VerdictAddr   string        // replica whose health feed is checked ("" = none)
	Kill          func() error  // kills one replica after the steady window (nil = no kill)
	// Status, if set, receives a one-line progress report now and then.
	Status func(format string, args ...any)
}

// poll calls cond every 50 ms until it holds or timeout; it reports how long
// that took and whether it held.
func poll(ctx context.Context, timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout || ctx.Err() != nil {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Run drives the fleet through start, steady state and (optionally) a
// replica kill, filling r's values and checks.
func Run(ctx context.Context, opt Options, r *report.Result) error {
	m := len(opt.Expected)
	var verdicts *Verdicts
	vctx, vcancel := context.WithCancel(ctx)
	defer vcancel()
	if opt.VerdictAddr != "" {
		var err error
		if verdicts, err = WatchVerdicts(vctx, opt.VerdictAddr); err != nil {
			return err
		}
	}
	f, err := StartFleet(ctx, opt.Targets, opt.Proxies, opt.Zones, opt.Truth)
	if err != nil {
		return err
	}
	defer f.Stop()
	// Time to correct verdicts is measured from the fleet's start, alongside.
	verdictsAt := make(chan time.Duration, 1)
	if verdicts != nil {
		go func() {
			d, ok := poll(vctx, 2*opt.Timeout+opt.Steady, func() bool { return verdicts.Correct(opt.Expected, opt.Truth) == m })
			if ok {
				verdictsAt <- d
			}
		}()
	}
	v := r.Values
	v["proxies"], v["endpoints"], v["replicas"], v["k"] = float64(opt.Proxies), float64(m), float64(len(opt.Targets)), float64(opt.K)

	var view View
	if opt.Status == nil {
		opt.Status = func(string, ...any) {}
	}
	phase := "coverage"
	covered := func() bool {
		view = f.View(opt.Expected)
		opt.Status("%s: %d/%d proxies connected, %d/%d endpoints covered", phase, view.Connected, opt.Proxies, view.Covered, m)
		return view.Connected == opt.Proxies && view.Covered == m && view.MinChecker >= opt.K
	}
	d, ok := poll(ctx, opt.Timeout, covered)
	v["time_to_full_coverage_s"] = d.Seconds()
	r.AddCheck("coverage", ok, "%d of %d endpoints checked by ≥ %d connected proxies after %.2fs (fewest checkers %d)", view.Covered, m, opt.K, d.Seconds(), view.MinChecker)
	if !ok {
		v["coverage"] = float64(view.Covered) / float64(m)
		v["connected_proxies"] = float64(view.Connected)
		v["reconnects"] = float64(f.reconn.Load())
		v["assigned_checks"] = float64(view.Assigned)
		return nil
	}

	// Steady state: count simulated probes against the ideal k·M per interval.
	opt.Status("steady state for %s", opt.Steady)
	p0, rep0, t0 := f.probes.Load(), f.reports.Load(), time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(opt.Steady):
	}
	view = f.View(opt.Expected)
	window := time.Since(t0)
	intervals := window.Seconds() / opt.CheckInterval.Seconds()
	probes := float64(f.probes.Load()-p0) / intervals
	v["coverage"] = float64(view.Covered) / float64(m)
	v["assigned_checks"] = float64(view.Assigned)
	v["probes_per_interval"] = probes
	v["probes_per_interval_ideal_kM"] = float64(opt.K * m)
	v["probes_per_interval_naive_NM"] = float64(opt.Proxies * m)
	v["load_max"] = float64(view.MaxLoad)
	v["load_mean"] = view.MeanLoad
	if view.MeanLoad > 0 {
		v["load_spread_max_over_mean"] = float64(view.MaxLoad) / view.MeanLoad
	}
	v["reports_per_second"] = float64(f.reports.Load()-rep0) / window.Seconds()
	r.Requests = uint64(f.reports.Load())
	// Assignments are exact; probes counted by tickers may drift by one
	// interval per proxy over a short window.
	r.AddCheck("probes-kM", view.Assigned <= opt.K*m*11/10, "%d checks assigned per interval, k·M = %d, N·M = %d", view.Assigned, opt.K*m, opt.Proxies*m)

	if verdicts != nil {
		var ok bool
		select {
		case d := <-verdictsAt:
			ok = true
			v["time_to_correct_verdicts_s"] = d.Seconds()
		case <-time.After(opt.Timeout):
		case <-ctx.Done():
		}
		n := verdicts.Correct(opt.Expected, opt.Truth)
		v["verdicts_correct_fraction"] = float64(n) / float64(m)
		r.AddCheck("verdicts", ok, "%d of %d verdicts on %s match the truth table", n, m, opt.VerdictAddr)
	}

	if opt.Kill != nil {
		phase = "after kill"
		re0 := f.reconn.Load()
		if err := opt.Kill(); err != nil {
			return fmt.Errorf("killing a replica: %w", err)
		}
		d, ok := poll(ctx, opt.Timeout, func() bool { return f.reconn.Load() > re0 && covered() })
		v["converge_after_kill_s"] = d.Seconds()
		v["reconnects"] = float64(f.reconn.Load() - re0)
		r.AddCheck("converge-after-kill", ok, "all %d proxies reconnected and every endpoint checked by ≥ %d after %.2fs", opt.Proxies, opt.K, d.Seconds())
	}
	return nil
}
