// Package runner drives a request function at a given concurrency, either
// closed-loop (each worker fires its next request when the previous one
// returns) or open-loop at a fixed rate with latency measured from each
// request's intended start, which corrects for coordinated omission.
package runner

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/loadtest/hist"
)

// MaxDuration bounds every run, whatever the flags say.
const MaxDuration = time.Hour

// Op performs request number seq on behalf of worker. It returns an outcome
// label (e.g. "OK", "OVER_LIMIT", "200") counted in Result.Outcomes; a
// non-nil error counts as a failed request (its outcome is ignored).
type Op func(ctx context.Context, worker int, seq uint64) (outcome string, err error)

// Config bounds and shapes a run.
type Config struct {
	Concurrency int           // workers; ≥ 1
	Duration    time.Duration // always bounds the run; 0 < d ≤ MaxDuration
	Requests    uint64        // stop after this many requests; 0 = duration only
	Rate        float64       // requests/s for open loop; 0 = closed loop
	// Grace is how long requests started before the end may still finish
	// (and be counted); later they are cancelled. Default 2 s.
	Grace time.Duration
	// Progress, if set, is called about every ProgressEvery with a live view.
	Progress      func(Snapshot)
	ProgressEvery time.Duration
}

// Validate reports a config that cannot run, naming the flag.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency must be ≥ 1, got %d", c.Concurrency)
	case c.Duration <= 0 || c.Duration > MaxDuration:
		return fmt.Errorf("--duration must be in (0, %s], got %s", MaxDuration, c.Duration)
	case c.Rate < 0:
		return fmt.Errorf("--rate must be ≥ 0, got %g", c.Rate)
	}
	return nil
}

// Snapshot is the live state shown on the progress line.
type Snapshot struct {
	Elapsed  time.Duration
	Requests uint64
	Errors   uint64
}

// Second is one second of the run's timeline.
type Second struct {
	Second   int    `json:"second"`
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
}

// Result is what a run measured.
type Result struct {
	Elapsed  time.Duration
	Requests uint64 // completed, including errors
	Errors   uint64
	Outcomes map[string]uint64
	// ErrorSamples holds up to 5 distinct error texts.
	ErrorSamples []string
	Latency      *hist.Recorder
	// SendLag (open loop only) is how late each request started relative to
	// its intended time: the generator's own delay (timer wake-up, waiting
	// for a free worker, CPU). It is part of Latency, shown apart so a slow
	// generator cannot pass for a slow target.
	SendLag  *hist.Recorder
	Timeline []Second
	// Late counts open-loop requests that started more than 1 ms after their
	// intended time (every worker was busy, or the generator lacked CPU).
	Late uint64
}

type worker struct {
	lat      *hist.Recorder
	lag      *hist.Recorder
	outcomes map[string]uint64
	errs     []string
	late     uint64
}

// Run executes op until the duration ends, the request count is reached or
// ctx is cancelled. Requests in flight at the end are awaited (with their ctx
// cancelled) and counted.
func Run(ctx context.Context, cfg Config, op Op) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+cfg.Grace)
	defer cancel()

	nsec := int(cfg.Duration/time.Second) + 2
	perSec := make([]atomic.Uint64, nsec)
	errSec := make([]atomic.Uint64, nsec)
	var next, done, failed atomic.Uint64
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	start := time.Now()
	deadline := start.Add(cfg.Duration)

	// Open loop: one pacer releases request numbers on schedule and idle
	// workers take them; request seq is due at start+seq·interval no matter
	// how long earlier ones took.
	var jobs chan uint64
	if interval > 0 {
		jobs = make(chan uint64, cfg.Concurrency)
		go pace(ctx, newTicker(start, max(interval, minTick)), start, deadline, interval, cfg.Requests, jobs)
	}

	workers := make([]*worker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{lat: hist.New(), lag: hist.New(), outcomes: map[string]uint64{}}
		workers[i] = w
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			// No new request after the deadline; those in flight get Grace
			// to finish so the last scheduled ones are counted.
			for ctx.Err() == nil && time.Now().Before(deadline) {
				var seq uint64
				if jobs != nil {
					var ok bool
					select {
					case seq, ok = <-jobs:
						if !ok {
							return
						}
					case <-ctx.Done():
						return
					}
				} else if seq = next.Add(1) - 1; cfg.Requests > 0 && seq >= cfg.Requests {
					return
				}
				sent := time.Now()
				intended := sent
				if jobs != nil {
					intended = start.Add(time.Duration(seq) * interval)
					if lag := sent.Sub(intended); lag > time.Millisecond {
						w.late++
					}
				}
				outcome, err := op(ctx, id, seq)
				end := time.Now()
				if err != nil && (ctx.Err() != nil || !end.Before(deadline.Add(cfg.Grace))) {
					// Cut off by the end of the run, not a target failure.
					return
				}
				w.lat.Record(end.Sub(intended))
				if jobs != nil {
					w.lag.Record(sent.Sub(intended))
				}
				sec := int(end.Sub(start) / time.Second)
				if sec >= nsec {
					sec = nsec - 1
				}
				perSec[sec].Add(1)
				done.Add(1)
				if err != nil {
					failed.Add(1)
					errSec[sec].Add(1)
					if len(w.errs) < 5 {
						w.errs = append(w.errs, err.Error())
					}
					continue
				}
				w.outcomes[outcome]++
			}
		}(i)
	}

	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if cfg.Progress != nil {
		every := cfg.ProgressEvery
		if every <= 0 {
			every = 500 * time.Millisecond
		}
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					cfg.Progress(Snapshot{Elapsed: time.Since(start), Requests: done.Load(), Errors: failed.Load()})
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopProgress)
	pwg.Wait()

	res := &Result{Elapsed: elapsed, Requests: done.Load(), Errors: failed.Load(), Outcomes: map[string]uint64{}, Latency: hist.New(), SendLag: hist.New()}
	seen := map[string]bool{}
	for _, w := range workers {
		res.Latency.Merge(w.lat)
		res.SendLag.Merge(w.lag)
		res.Late += w.late
		for k, v := range w.outcomes {
			res.Outcomes[k] += v
		}
		for _, e := range w.errs {
			if !seen[e] && len(res.ErrorSamples) < 5 {
				seen[e] = true
				res.ErrorSamples = append(res.ErrorSamples, e)
			}
		}
	}
	// Whole seconds only: the last partial one (and the grace tail) would
	// read as a drop in throughput.
	last := max(1, int(elapsed/time.Second))
	for i := 0; i < nsec && i < last; i++ {
		res.Timeline = append(res.Timeline, Second{Second: i, Requests: perSec[i].Load(), Errors: errSec[i].Load()})
	}
	return res, nil
}

// Throughput is completed requests per second.
func (r *Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}
