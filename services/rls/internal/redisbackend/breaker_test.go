package redisbackend

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	b := &breaker{threshold: 2, cooldown: time.Second}
	t0 := time.Unix(1000, 0)
	if !b.allow(t0) {
		t.Fatal("closed breaker refused")
	}
	b.failure(t0)
	if !b.allow(t0) || b.open(t0) {
		t.Fatal("opened before the threshold")
	}
	b.failure(t0)
	if b.allow(t0.Add(999*time.Millisecond)) || !b.open(t0) {
		t.Fatal("not open after threshold failures")
	}
	// After the cooldown exactly one probe goes through.
	t1 := t0.Add(time.Second)
	if !b.allow(t1) {
		t.Fatal("no probe after cooldown")
	}
	if b.allow(t1) {
		t.Fatal("second concurrent probe allowed")
	}
	b.failure(t1) // probe failed: open again for a cooldown
	if b.allow(t1.Add(500 * time.Millisecond)) {
		t.Fatal("allowed right after a failed probe")
	}
	t2 := t1.Add(time.Second)
	if !b.allow(t2) {
		t.Fatal("no second probe")
	}
	b.success()
	if !b.allow(t2) || !b.allow(t2) || b.open(t2) {
		t.Fatal("not closed after a successful probe")
	}
}
