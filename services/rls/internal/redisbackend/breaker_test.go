package redisbackend

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0
	b := &breaker{threshold: 2, cooldown: time.Second, clock: func() time.Time { return now }}
	if !b.allow() {
		t.Fatal("closed breaker refused")
	}
	b.failure()
	if !b.allow() || b.open() {
		t.Fatal("opened before the threshold")
	}
	b.failure()
	if !b.open() {
		t.Fatal("not open after threshold failures")
	}
	now = t0.Add(999 * time.Millisecond)
	if b.allow() {
		t.Fatal("allowed before the cooldown ended")
	}
	// After the cooldown exactly one probe goes through.
	t1 := t0.Add(time.Second)
	now = t1
	if !b.allow() {
		t.Fatal("no probe after cooldown")
	}
	if b.allow() {
		t.Fatal("second concurrent probe allowed")
	}
	b.failure() // probe failed: open again for a cooldown
	now = t1.Add(500 * time.Millisecond)
	if b.allow() {
		t.Fatal("allowed right after a failed probe")
	}
	now = t1.Add(time.Second)
	if !b.allow() {
		t.Fatal("no second probe")
	}
	b.success()
	if !b.allow() || !b.allow() || b.open() {
		t.Fatal("not closed after a successful probe")
	}
}
