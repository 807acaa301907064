package runner

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func ok(context.Context, int, uint64) (string, error) { return "OK", nil }

func TestRequestBound(t *testing.T) {
	res, err := Run(context.Background(), Config{Concurrency: 8, Duration: 30 * time.Second, Requests: 1000}, ok)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 1000 || res.Outcomes["OK"] != 1000 || res.Latency.Count() != 1000 {
		t.Fatalf("requests=%d outcomes=%v hist=%d, want 1000", res.Requests, res.Outcomes, res.Latency.Count())
	}
	var sum uint64
	for _, s := range res.Timeline {
		sum += s.Requests
	}
	if sum != 1000 {
		t.Fatalf("timeline sums to %d", sum)
	}
}

func TestDurationBound(t *testing.T) {
	res, err := Run(context.Background(), Config{Concurrency: 2, Duration: 300 * time.Millisecond}, func(ctx context.Context, _ int, _ uint64) (string, error) {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Millisecond):
			return "OK", nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Elapsed < 300*time.Millisecond || res.Elapsed > 10*time.Second {
		t.Fatalf("elapsed %s", res.Elapsed)
	}
	if res.Errors != 0 {
		t.Fatalf("requests cut by the end of the run counted as errors: %d", res.Errors)
	}
}

// Open loop at 500/s for 2 s must issue 1000 requests, spread evenly: each
// 250 ms quarter gets its share, however many workers there are.
func TestOpenLoopSchedule(t *testing.T) {
	var mu sync.Mutex
	var starts []time.Duration
	t0 := time.Now()
	res, err := Run(context.Background(), Config{Concurrency: 4, Duration: 2 * time.Second, Rate: 500}, func(context.Context, int, uint64) (string, error) {
		mu.Lock()
		starts = append(starts, time.Since(t0))
		mu.Unlock()
		return "OK", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 1000 {
		t.Fatalf("requests = %d, want exactly 1000 (rate × duration)", res.Requests)
	}
	var buckets [8]int
	for _, s := range starts {
		if i := int(s / (250 * time.Millisecond)); i < len(buckets) {
			buckets[i]++
		}
	}
	for i, n := range buckets {
		// 125 expected; allow scheduler noise on a loaded 2-core box.
		if n < 60 || n > 190 {
			t.Errorf("quarter %d got %d requests, want ≈125 (all: %v)", i, n, buckets)
		}
	}
}

// Coordinated omission: one worker, 100 req/s, the 10th request stalls
// 300 ms. Open loop charges the ~30 requests that were due during the stall
// with their waiting time; closed loop hides it in a single sample.
func TestCoordinatedOmissionCorrection(t *testing.T) {
	stall := func(_ context.Context, _ int, seq uint64) (string, error) {
		if seq == 10 {
			time.Sleep(300 * time.Millisecond)
		}
		return "OK", nil
	}
	open, err := Run(context.Background(), Config{Concurrency: 1, Duration: 1 * time.Second, Rate: 100}, stall)
	if err != nil {
		t.Fatal(err)
	}
	// ≥ 10% of 100 requests waited ≥ 100 ms: the p90 must show it.
	if p90 := open.Latency.Quantile(90); p90 < 100_000 {
		t.Errorf("open-loop p90 = %d µs, want ≥ 100 ms (stall not charged to queued requests)", p90)
	}
	if open.Late < 10 {
		t.Errorf("late = %d, want ≥ 10", open.Late)
	}
	// The queued requests started late: the send lag shows the generator
	// (here: its only worker) as the cause, apart from the latency.
	if n := open.SendLag.Count(); n != int64(open.Requests) {
		t.Errorf("send lag has %d samples, want one per request (%d)", n, open.Requests)
	}
	if p90 := open.SendLag.Quantile(90); p90 < 100_000 {
		t.Errorf("open-loop send lag p90 = %d µs, want ≥ 100 ms", p90)
	}
	closed, err := Run(context.Background(), Config{Concurrency: 1, Duration: 30 * time.Second, Requests: 100}, stall)
	if err != nil {
		t.Fatal(err)
	}
	if p90 := closed.Latency.Quantile(90); p90 > 50_000 {
		t.Errorf("closed-loop p90 = %d µs, want small (only one slow sample)", p90)
	}
	if n := closed.SendLag.Count(); n != 0 {
		t.Errorf("closed loop recorded %d send lags, want none (no schedule)", n)
	}
}

func TestErrorsCounted(t *testing.T) {
	var n atomic.Int64
	res, err := Run(context.Background(), Config{Concurrency: 3, Duration: 30 * time.Second, Requests: 300}, func(context.Context, int, uint64) (string, error) {
		if n.Add(1)%3 == 0 {
			return "", errors.New("boom")
		}
		return "OK", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 100 || res.Outcomes["OK"] != 200 || len(res.ErrorSamples) != 1 {
		t.Fatalf("errors=%d outcomes=%v samples=%v", res.Errors, res.Outcomes, res.ErrorSamples)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{{Concurrency: 0, Duration: time.Second}, {Concurrency: 1}, {Concurrency: 1, Duration: 2 * MaxDuration}, {Concurrency: 1, Duration: time.Second, Rate: -1}} {
		if _, err := Run(context.Background(), c, ok); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

func TestProgress(t *testing.T) {
	var calls atomic.Int32
	_, err := Run(context.Background(), Config{Concurrency: 1, Duration: 300 * time.Millisecond, Rate: 100, ProgressEvery: 20 * time.Millisecond,
		Progress: func(Snapshot) { calls.Add(1) }}, ok)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() == 0 {
		t.Fatal("progress never called")
	}
}

// The open loop must not add its own delay: a request is sent within
// microseconds of its intended time, not whenever the Go scheduler next
// looks at its timers (up to ≈ 1 ms later on an idle process, ≈ 0.5 ms at
// the median: a timer per request showed 550–600 µs here). A loaded box
// delays any run, so the best of up to eight one-second runs counts; when
// none gets under the bound (a saturated box, e.g. the whole suite running
// on two cores) the test skips rather than flakes, unless
// SIDEMESH_TIMING_TESTS=1 asks for the verdict.
func TestOpenLoopSendsOnTime(t *testing.T) {
	var best int64 = -1
	for range 8 {
		res, err := Run(context.Background(), Config{Concurrency: 4, Duration: time.Second, Rate: 1000}, ok)
		if err != nil {
			t.Fatal(err)
		}
		if res.SendLag.Count() < 900 {
			t.Fatalf("send lag has %d samples, want ≈ 1000", res.SendLag.Count())
		}
		p50 := res.SendLag.Quantile(50)
		if best < 0 || p50 < best {
			best = p50
		}
		if best < 250 {
			return
		}
	}
	if os.Getenv("SIDEMESH_TIMING_TESTS") == "" {
		t.Skipf("open-loop send lag p50 = %d µs at best in 8 runs: the box is too busy to judge (SIDEMESH_TIMING_TESTS=1 to fail)", best)
	}
	t.Fatalf("open-loop send lag p50 = %d µs (best of 8), want < 250 µs", best)
}
