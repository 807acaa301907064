package runner

import (
	"context"
	"time"
)

// A ticker wakes the open-loop pacer about every period. Wait returns when
// the next tick (or a missed one) is due, or with ctx's error.
type ticker interface {
	Wait(ctx context.Context) error
	Stop()
}

// minTick bounds the pacer's wake-ups at high rates: above 1/minTick
// requests/s a tick releases several requests at once.
const minTick = 20 * time.Microsecond

// pace releases request numbers into jobs as they fall due — seq at
// start+seq·interval — until the next one would start at or after deadline
// or limit (> 0) requests are released; then it closes jobs. A release that
// finds every worker busy waits for one (the request's latency still counts
// from its intended time, so that wait is charged, not hidden).
func pace(ctx context.Context, t ticker, start, deadline time.Time, interval time.Duration, limit uint64, jobs chan<- uint64) {
	defer close(jobs)
	defer t.Stop()
	var next uint64
	for {
		due := uint64(time.Since(start)/interval) + 1 // seqs [0, due) are due now
		for ; next < due; next++ {
			if (limit > 0 && next >= limit) || !start.Add(time.Duration(next)*interval).Before(deadline) {
				return
			}
			select {
			case jobs <- next:
			case <-ctx.Done():
				return
			}
		}
		if t.Wait(ctx) != nil {
			return
		}
	}
}

// timerTicker is the portable ticker: a Go timer. Go's scheduler sleeps in
// whole milliseconds when the process is idle, so a tick can come up to
// ≈ 1 ms late (newTicker prefers a kernel timer where there is one).
type timerTicker struct {
	period time.Duration
	next   time.Time
	t      *time.Timer
}

func newTimerTicker(start time.Time, period time.Duration) *timerTicker {
	return &timerTicker{period: period, next: start.Add(period), t: time.NewTimer(time.Until(start.Add(period)))}
}

func (t *timerTicker) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.t.C:
	}
	now := time.Now()
	for !t.next.After(now) {
		t.next = t.next.Add(t.period)
	}
	t.t.Reset(t.next.Sub(now))
	return nil
}

func (t *timerTicker) Stop() { t.t.Stop() }
