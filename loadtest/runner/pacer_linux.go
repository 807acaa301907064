package runner

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fdTicker is a periodic timerfd read through Go's network poller: the
// kernel's high-resolution timer wakes the pacer within microseconds of
// each tick, where a Go timer on an idle process wakes up to ≈ 1 ms late
// (the runtime's epoll_wait takes whole milliseconds) — a delay the
// generator would otherwise add to every latency it reports.
type fdTicker struct {
	f    *os.File
	stop func() bool
	buf  [8]byte
}

func newTicker(start time.Time, period time.Duration) ticker {
	t, err := newFDTicker(period)
	if err != nil {
		return newTimerTicker(start, period)
	}
	return t
}

func newFDTicker(period time.Duration) (*fdTicker, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	ts := unix.NsecToTimespec(int64(period))
	if err := unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("timerfd_settime: %w", err)
	}
	// A non-blocking descriptor: os.NewFile registers it with the poller.
	return &fdTicker{f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

func (t *fdTicker) Wait(ctx context.Context) error {
	if t.stop == nil {
		t.stop = context.AfterFunc(ctx, func() { t.f.Close() })
	}
	// Returns the number of expirations since the last read (≥ 1); the
	// pacer works out from the clock how many requests are due.
	if _, err := t.f.Read(t.buf[:]); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("timerfd read: %w", err)
	}
	return nil
}

func (t *fdTicker) Stop() {
	if t.stop != nil {
		t.stop()
	}
	t.f.Close()
}
