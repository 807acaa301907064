// Package limitertest is the behaviour every limiter.Backend must show; the
// memory and Redis backends both run it, which also proves the Lua script
// decides exactly like the Go reference.
package limitertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// Base is a window-aligned instant (a whole day in UTC) near the real clock,
// so Redis TTLs stay sane; tests add offsets to it.
func Base() time.Time {
	return time.Now().UTC().Truncate(24 * time.Hour)
}

type step struct {
	at    time.Duration // offset from Base
	items []limiter.Item
	// want per item: over, remaining
	over      []bool
	remaining []uint32
}

func item(key string, alg rules.Algorithm, unit time.Duration, limit, hits uint32) limiter.Item {
	return limiter.Item{Key: key, Algorithm: alg, Unit: unit, Limit: limit, Hits: hits, Enforce: limiter.Enforced}
}

func run(t *testing.T, b limiter.Backend, steps []step) {
	t.Helper()
	base := Base()
	for i, s := range steps {
		res := make([]limiter.Result, len(s.items))
		if err := b.Check(context.Background(), base.Add(s.at), s.items, res); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		for j := range s.items {
			if res[j].Over != s.over[j] || res[j].Remaining != s.remaining[j] {
				t.Fatalf("step %d item %d (%s): got over=%v remaining=%d, want over=%v remaining=%d (result %+v)",
					i, j, s.items[j].Key, res[j].Over, res[j].Remaining, s.over[j], s.remaining[j], res[j])
			}
		}
	}
}

func key(name string) string {
	return limiter.Key(fmt.Sprintf("t%d:", rand.Uint64()), rules.FixedWindow, time.Minute, "d", name, "v")
}

func one(over bool, rem uint32) ([]bool, []uint32) { return []bool{over}, []uint32{rem} }

// Run runs the suite against fresh backends from newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) limiter.Backend) {
	t.Run("FixedWindowEdges", func(t *testing.T) {
		b := newBackend(t)
		k := key("fixed")
		it := item(k, rules.FixedWindow, time.Minute, 3, 1)
		var steps []step
		for i, rem := range []uint32{2, 1, 0} {
			o, r := one(false, rem)
			steps = append(steps, step{at: 10*time.Second + time.Duration(i)*time.Second, items: []limiter.Item{it}, over: o, remaining: r})
		}
		o, r := one(true, 0)
		steps = append(steps, step{at: 59*time.Second + 999*time.Millisecond, items: []limiter.Item{it}, over: o, remaining: r})
		// The next window starts at exactly +60s.
		o, r = one(false, 2)
		steps = append(steps, step{at: 60 * time.Second, items: []limiter.Item{it}, over: o, remaining: r})
		run(t, b, steps)

		res := make([]limiter.Result, 1)
		b.Check(context.Background(), Base().Add(70*time.Second), []limiter.Item{it}, res)
		if res[0].ResetAfter != 50*time.Second {
			t.Fatalf("ResetAfter = %v, want 50s", res[0].ResetAfter)
		}
	})
	t.Run("HitsAddend", func(t *testing.T) {
		b := newBackend(t)
		k := key("hits")
		mk := func(h uint32) []limiter.Item { return []limiter.Item{item(k, rules.FixedWindow, time.Hour, 10, h)} }
		o6, r6 := one(false, 6)
		oOver, rOver := one(true, 6) // 4+7 > 10: rejected, not charged, 6 still left
		o0, r0 := one(false, 0)
		run(t, b, []step{
			{at: time.Second, items: mk(4), over: o6, remaining: r6},
			{at: time.Second, items: mk(7), over: oOver, remaining: rOver},
			{at: time.Second, items: mk(6), over: o0, remaining: r0},
			{at: time.Second, items: mk(0), over: o0, remaining: r0}, // check only: fits exactly
			{at: time.Second, items: mk(1), over: []bool{true}, remaining: []uint32{0}},
		})
	})
	t.Run("RejectedRequestChargesNothing", func(t *testing.T) {
		b := newBackend(t)
		a := item(key("narrow"), rules.FixedWindow, time.Hour, 1, 1)
		wide := item(key("wide"), rules.FixedWindow, time.Hour, 5, 1)
		run(t, b, []step{
			{at: time.Second, items: []limiter.Item{a, wide}, over: []bool{false, false}, remaining: []uint32{0, 4}},
			{at: time.Second, items: []limiter.Item{a, wide}, over: []bool{true, false}, remaining: []uint32{0, 4}},
			{at: time.Second, items: []limiter.Item{a, wide}, over: []bool{true, false}, remaining: []uint32{0, 4}},
			{at: time.Second, items: []limiter.Item{wide}, over: []bool{false}, remaining: []uint32{3}},
		})
	})
	t.Run("RepeatedDescriptorSeesEarlierHits", func(t *testing.T) {
		b := newBackend(t)
		for _, alg := range []rules.Algorithm{rules.FixedWindow, rules.SlidingWindow, rules.TokenBucket} {
			k := key("twice")
			it := item(k, alg, time.Hour, 3, 1)
			// Evaluated in order: the second copy sees the first's hit.
			run(t, b, []step{
				{at: time.Second, items: []limiter.Item{it, it}, over: []bool{false, false}, remaining: []uint32{2, 1}},
				// 1 left: the second copy does not fit, the request is
				// rejected and the first copy's hit is taken back.
				{at: time.Second, items: []limiter.Item{it, it}, over: []bool{false, true}, remaining: []uint32{1, 0}},
				{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{0}},
			})
		}
	})
	t.Run("ShadowNeverRejects", func(t *testing.T) {
		b := newBackend(t)
		s := item(key("shadow"), rules.FixedWindow, time.Hour, 1, 1)
		s.Enforce = limiter.CountOnly
		e := item(key("enforced"), rules.FixedWindow, time.Hour, 5, 1)
		run(t, b, []step{
			{at: time.Second, items: []limiter.Item{s, e}, over: []bool{false, false}, remaining: []uint32{0, 4}},
			{at: time.Second, items: []limiter.Item{s, e}, over: []bool{true, false}, remaining: []uint32{0, 3}},
			{at: time.Second, items: []limiter.Item{s, e}, over: []bool{true, false}, remaining: []uint32{0, 2}},
		})
	})
	t.Run("QuotaGroup", func(t *testing.T) {
		// The request is rejected when all its quota group members are over
		// (or an enforced item is), and then charges nothing; one member
		// that fits keeps it, and charges as usual.
		b := newBackend(t)
		quota := func(name string, limit uint32) limiter.Item {
			it := item(key(name), rules.FixedWindow, time.Hour, limit, 1)
			it.Enforce = limiter.QuotaMember
			return it
		}
		q1, q2, q3 := quota("q1", 1), quota("q2", 1), quota("q3", 5)
		ord := item(key("ord"), rules.FixedWindow, time.Hour, 5, 1)
		sh := item(key("shadow"), rules.FixedWindow, time.Hour, 5, 1)
		sh.Enforce = limiter.CountOnly
		check := func(it limiter.Item) limiter.Item { it.Hits = 0; return it }
		run(t, b, []step{
			{at: time.Second, items: []limiter.Item{q1, q2, ord, sh}, over: []bool{false, false, false, false}, remaining: []uint32{0, 0, 4, 4}},
			// Both quotas over: rejected, ord and the shadow item not charged.
			{at: time.Second, items: []limiter.Item{q1, q2, ord, sh}, over: []bool{true, true, false, false}, remaining: []uint32{0, 0, 4, 4}},
			{at: time.Second, items: []limiter.Item{check(ord), check(sh)}, over: []bool{false, false}, remaining: []uint32{4, 4}},
			// One quota over, one fits: kept; everything that fits is charged.
			{at: time.Second, items: []limiter.Item{q1, q3, ord}, over: []bool{true, false, false}, remaining: []uint32{0, 4, 3}},
			{at: time.Second, items: []limiter.Item{check(q3), check(ord)}, over: []bool{false, false}, remaining: []uint32{4, 3}},
			// An enforced item over rejects whatever the quotas.
			{at: time.Second, items: []limiter.Item{q3, quota("full", 0), item(key("zero"), rules.FixedWindow, time.Hour, 0, 1)}, over: []bool{false, true, true}, remaining: []uint32{4, 0, 0}},
			// A count-only item over never rejects, nor counts as a member.
			{at: time.Second, items: []limiter.Item{check(q3), ord, sh}, over: []bool{false, false, false}, remaining: []uint32{4, 2, 3}},
		})
	})
	t.Run("QuotaGroupAlone", func(t *testing.T) {
		// A request of quota members only: all over → rejected (nothing to
		// charge); a repeated member sees its own earlier hit, and the
		// rejected request takes it back.
		b := newBackend(t)
		q := item(key("qa"), rules.FixedWindow, time.Hour, 1, 1)
		q.Enforce = limiter.QuotaMember
		other := item(key("qb"), rules.FixedWindow, time.Hour, 1, 1)
		other.Enforce = limiter.QuotaMember
		run(t, b, []step{
			{at: time.Second, items: []limiter.Item{other}, over: []bool{false}, remaining: []uint32{0}},
			// q fits, then its copy is over and other is over: one member
			// fit, so the request is kept and q's first copy charged.
			{at: time.Second, items: []limiter.Item{q, q, other}, over: []bool{false, true, true}, remaining: []uint32{0, 0, 0}},
			{at: time.Second, items: []limiter.Item{q, other}, over: []bool{true, true}, remaining: []uint32{0, 0}},
		})
	})
	t.Run("OverItemIsInvisibleToLaterItems", func(t *testing.T) {
		// An item that does not fit charges nothing, also for the items
		// after it in the same request: a check-only copy of a full key
		// still fits exactly.
		b := newBackend(t)
		for _, alg := range []rules.Algorithm{rules.FixedWindow, rules.SlidingWindow, rules.TokenBucket} {
			full := item(key("full"), alg, time.Hour, 1, 1)
			sh := full
			sh.Enforce = limiter.CountOnly
			check := full
			check.Hits = 0
			run(t, b, []step{
				{at: time.Second, items: []limiter.Item{full}, over: []bool{false}, remaining: []uint32{0}},
				{at: time.Second, items: []limiter.Item{sh, check}, over: []bool{true, false}, remaining: []uint32{0, 0}},
			})
		}
	})
	t.Run("RejectedRepeatedKeyRestored", func(t *testing.T) {
		// Both copies of a key charge, then another item rejects the
		// request: the key gets back its value from before the first copy.
		b := newBackend(t)
		for _, alg := range []rules.Algorithm{rules.FixedWindow, rules.SlidingWindow, rules.TokenBucket} {
			it := item(key("rep"), alg, time.Hour, 5, 1)
			zero := item(key("zero"), rules.FixedWindow, time.Hour, 0, 1)
			run(t, b, []step{{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{4}}})
			res := make([]limiter.Result, 3)
			if err := b.Check(context.Background(), Base().Add(time.Second), []limiter.Item{it, it, zero}, res); err != nil {
				t.Fatal(err)
			}
			if res[0].Over || res[1].Over || !res[2].Over || res[0].Charged || res[1].Charged {
				t.Fatalf("%v: rejected request with a repeated key: %+v", alg, res)
			}
			run(t, b, []step{{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{3}}})
		}
	})
	t.Run("ZeroLimitAlwaysOver", func(t *testing.T) {
		b := newBackend(t)
		for _, alg := range []rules.Algorithm{rules.FixedWindow, rules.SlidingWindow, rules.TokenBucket} {
			o, r := one(true, 0)
			run(t, b, []step{{at: time.Second, items: []limiter.Item{item(key("zero"), alg, time.Second, 0, 1)}, over: o, remaining: r}})
		}
	})
	t.Run("SlidingWindow", func(t *testing.T) {
		b := newBackend(t)
		k := key("sliding")
		it := item(k, rules.SlidingWindow, time.Minute, 10, 1)
		it10 := it
		it10.Hits = 10
		var steps []step
		steps = append(steps, step{at: 30 * time.Second, items: []limiter.Item{it10}, over: []bool{false}, remaining: []uint32{0}})
		steps = append(steps, step{at: 59 * time.Second, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}})
		// At +90s the previous window (10) weighs 0.5: estimate 5, five more fit.
		for i := 0; i < 5; i++ {
			steps = append(steps, step{at: 90 * time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{uint32(4 - i)}})
		}
		steps = append(steps, step{at: 90 * time.Second, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}})
		// At +114s the weight is 0.1: 1 + 5 = 6, four more fit.
		for i := 0; i < 4; i++ {
			steps = append(steps, step{at: 114 * time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{uint32(3 - i)}})
		}
		steps = append(steps, step{at: 114 * time.Second, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}})
		run(t, b, steps)
		// No boundary burst: right after the boundary the full previous
		// window still counts.
		k2 := key("sliding2")
		it2 := item(k2, rules.SlidingWindow, time.Minute, 10, 10)
		one1 := item(k2, rules.SlidingWindow, time.Minute, 10, 1)
		run(t, b, []step{
			{at: 59 * time.Second, items: []limiter.Item{it2}, over: []bool{false}, remaining: []uint32{0}},
			{at: 60 * time.Second, items: []limiter.Item{one1}, over: []bool{true}, remaining: []uint32{0}},
			{at: 66 * time.Second, items: []limiter.Item{one1}, over: []bool{false}, remaining: []uint32{0}},
		})
	})
	t.Run("TokenBucket", func(t *testing.T) {
		b := newBackend(t)
		it := item(key("bucket"), rules.TokenBucket, time.Minute, 6, 1) // one token per 10s
		it.Burst = 3
		res := make([]limiter.Result, 1)
		steps := []step{
			{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{2}},
			{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{1}},
			{at: time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{0}},
			{at: time.Second, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}},
			{at: 10*time.Second + 999*time.Millisecond, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}},
			{at: 11 * time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{0}},
			{at: 11 * time.Second, items: []limiter.Item{it}, over: []bool{true}, remaining: []uint32{0}},
			// Refilled to the burst, never beyond it.
			{at: 200 * time.Second, items: []limiter.Item{it}, over: []bool{false}, remaining: []uint32{2}},
		}
		run(t, b, steps)
		it.Hits = 0
		if err := b.Check(context.Background(), Base().Add(200*time.Second), []limiter.Item{it}, res); err != nil {
			t.Fatal(err)
		}
		if res[0].Over || res[0].Remaining != 2 || res[0].ResetAfter != 10*time.Second {
			t.Fatalf("check-only: %+v", res[0])
		}
	})
}
