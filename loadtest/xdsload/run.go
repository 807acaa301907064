package xdsload

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
)

// Options shape an xDS fan-out run.
type Options struct {
	Clients       int
	Delta         bool
	Node          Node
	Changes       int
	ChangeTimeout time.Duration // per change (and for the initial sync)
	Initial       Matcher       // what a synced client has seen first
	Pause         time.Duration // between changes
	// Status, if set, receives a one-line progress report now and then.
	Status func(format string, args ...any)
}

// ChangeResult is one change across the fleet.
type ChangeResult struct {
	Latencies []time.Duration // change → ACK, one per client that got it
	Bytes     int64           // response bytes all clients received for it
	Messages  int64
}

// Outcome is what a run measured.
type Outcome struct {
	Initial ChangeResult
	Changes []ChangeResult
	Failed  int64 // broken streams
	Err     error // first stream error
	Bad     int64 // resources that did not decode
}

// Run starts the fleet, waits for the initial sync, makes each change and
// measures it, then closes the fleet.
func Run(ctx context.Context, conns []*grpc.ClientConn, opt Options, trig Trigger) (*Outcome, error) {
	if opt.Initial == nil {
		opt.Initial = Any
	}
	if opt.Status == nil {
		opt.Status = func(string, ...any) {}
	}
	// Arm the initial expectation before any stream exists.
	fl := &Fleet{delta: opt.Delta, size: opt.Clients, cancel: func() {}}
	w := fl.Expect(opt.Initial)
	start := fl.Bytes()
	fl.start(ctx, conns, opt.Clients, opt.Node)
	defer fl.Stop()
	out := &Outcome{}
	opt.Status("initial sync of %d clients", opt.Clients)
	out.Initial = fl.collect(ctx, w, start, opt.ChangeTimeout)
	if len(out.Initial.Latencies) < opt.Clients {
		out.Failed, out.Err = fl.Failed()
		return out, fmt.Errorf("initial sync: %d of %d clients synced within %s (broken streams %d, first error: %v)",
			len(out.Initial.Latencies), opt.Clients, opt.ChangeTimeout, out.Failed, out.Err)
	}
	for k := 1; k <= opt.Changes; k++ {
		if ctx.Err() != nil {
			break
		}
		opt.Status("change %d/%d", k, opt.Changes)
		var w *Wait
		before := fl.Bytes()
		if err := trig.Change(ctx, k, func(m Matcher) { w = fl.Expect(m) }); err != nil {
			return out, err
		}
		if w == nil {
			return out, fmt.Errorf("change %d: trigger armed nothing", k)
		}
		out.Changes = append(out.Changes, fl.collect(ctx, w, before, opt.ChangeTimeout))
		if opt.Pause > 0 && k < opt.Changes {
			select {
			case <-ctx.Done():
			case <-time.After(opt.Pause):
			}
		}
	}
	out.Failed, out.Err = fl.Failed()
	out.Bad = fl.BadResources()
	return out, nil
}

// collect waits for an expectation, then for the traffic to settle (no
// bytes for 200 ms, at most 2 s) so the whole push is counted.
func (f *Fleet) collect(ctx context.Context, w *Wait, bytesBefore int64, timeout time.Duration) ChangeResult {
	msgsBefore := f.msgs.Load()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	lat := w.Until(wctx)
	cancel()
	last, end := f.Bytes(), time.Now().Add(2*time.Second)
	for time.Now().Before(end) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		now := f.Bytes()
		if now == last {
			break
		}
		last = now
	}
	return ChangeResult{Latencies: lat, Bytes: last - bytesBefore, Messages: f.msgs.Load() - msgsBefore}
}
