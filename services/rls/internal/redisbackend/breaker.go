package redisbackend

import (
	"sync"
	"sync/atomic"
	"time"
)

// breaker stops callers from waiting on a dead Redis: after `threshold`
// consecutive failed round trips it opens for `cooldown`, then lets a single
// probe through; the probe's success closes it.
type breaker struct {
	threshold int64
	cooldown  time.Duration

	fails     atomic.Int64 // consecutive failures; the fast path reads only this
	mu        sync.Mutex
	openUntil time.Time
	probing   bool
}

func (b *breaker) allow(now time.Time) bool {
	if b.fails.Load() < b.threshold {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fails.Load() < b.threshold {
		return true
	}
	if now.Before(b.openUntil) || b.probing {
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

func (b *breaker) failure(now time.Time) {
	b.mu.Lock()
	if b.fails.Add(1) >= b.threshold {
		b.openUntil = now.Add(b.cooldown)
	}
	b.probing = false
	b.mu.Unlock()
}

// open reports whether calls are currently refused.
func (b *breaker) open(now time.Time) bool {
	if b.fails.Load() < b.threshold {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return now.Before(b.openUntil) || b.probing
}
