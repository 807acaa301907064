package redisbackend

import (
	"sync"
	"sync/atomic"
	"time"
)

// breaker stops callers from waiting on a dead Redis: after `threshold`
// consecutive failed round trips it opens for `cooldown`, then lets a single
// probe through; the probe's success closes it. It reads its own clock (the
// wall clock unless a test sets clock): a request's rate-limit time may be
// fixed or shifted, and mixing the two once kept it open for good.
type breaker struct {
	threshold int64
	cooldown  time.Duration
	clock     func() time.Time // nil: time.Now

	fails     atomic.Int64 // consecutive failures; the fast path reads only this
	mu        sync.Mutex
	openUntil time.Time
	probing   bool
}

func (b *breaker) now() time.Time {
	if b.clock != nil {
		return b.clock()
	}
	return time.Now()
}

// allow reports whether a call may go to Redis; while closed it reads only
// the failure count, not the clock.
func (b *breaker) allow() bool {
	if b.fails.Load() < b.threshold {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fails.Load() < b.threshold {
		return true
	}
	if b.now().Before(b.openUntil) || b.probing {
		return false
	}
	b.probing = true
	return true
}

func (b *breaker) success() {
	if b.fails.Load() == 0 {
		return
	}
	b.mu.Lock()
	b.fails.Store(0)
	b.probing = false
	b.mu.Unlock()
}

func (b *breaker) failure() {
	b.mu.Lock()
	if b.fails.Add(1) >= b.threshold {
		b.openUntil = b.now().Add(b.cooldown)
	}
	b.probing = false
	b.mu.Unlock()
}

// open reports whether calls are currently refused.
func (b *breaker) open() bool {
	if b.fails.Load() < b.threshold {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.now().Before(b.openUntil) || b.probing
}
