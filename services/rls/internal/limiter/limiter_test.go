package limiter_test

import (
	"context"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter/limitertest"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

func TestMemoryBackend(t *testing.T) {
	limitertest.Run(t, func(t *testing.T) limiter.Backend { return limiter.NewMemory() })
}

func TestKeysAreUnambiguous(t *testing.T) {
	k := func(kv ...string) string { return limiter.Key("p:", rules.FixedWindow, time.Minute, "d", kv...) }
	pairs := [][2]string{
		{k("a_b", "c"), k("a", "b_c")},
		{k("a", "b", "c", ""), k("a", "b", "", "c")},
		{k("1:a", "b"), k("1", ":ab")},
		{limiter.Key("p:", rules.FixedWindow, time.Minute, "d_a", "b", "c"), k("a_b", "c")},
		{limiter.Key("p:", rules.SlidingWindow, time.Minute, "d", "a", "b"), k("a", "b")},
		{limiter.Key("p:", rules.FixedWindow, time.Hour, "d", "a", "b"), k("a", "b")},
	}
	for _, p := range pairs {
		if p[0] == p[1] {
			t.Errorf("keys collide: %q", p[0])
		}
	}
	if got := k("user", "alice"); got != "{p:f60|1:d4:user5:alice}" {
		t.Errorf("key format changed: %q", got)
	}
}

func TestWindowStartMatchesAnchor(t *testing.T) {
	now := time.Unix(1795537114, 500e6)
	if got := limiter.WindowStart(now, time.Minute); got != 1795537080 {
		t.Fatalf("minute window = %d", got)
	}
	if got := limiter.WindowStart(now, time.Second); got != 1795537114 {
		t.Fatalf("second window = %d", got)
	}
	if got := limiter.WindowStart(now, 24*time.Hour); got%86400 != 0 || now.Unix()-got >= 86400 {
		t.Fatalf("day window = %d", got)
	}
}

func TestMemoryExpires(t *testing.T) {
	m := limiter.NewMemory()
	base := limitertest.Base()
	it := []limiter.Item{{Key: "k", Algorithm: rules.FixedWindow, Unit: time.Second, Limit: 1, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	m.Check(context.Background(), base, it, res)
	if m.Len() != 1 {
		t.Fatalf("len %d", m.Len())
	}
	m.Check(context.Background(), base.Add(10*time.Second), it, res)
	if m.Len() != 1 {
		t.Fatalf("expired counters not swept: len %d", m.Len())
	}
}

func TestOverCache(t *testing.T) {
	c := limiter.NewOverCache(64)
	c.Put("a", 100, 0)
	over := func(k string, now int64) bool { _, ok := c.Over(k, now); return ok }
	if u, ok := c.Over("a", 99); !ok || u != 100 || over("a", 100) || over("b", 0) {
		t.Fatal("over cache answers wrong")
	}
	for i := 0; i < 1000; i++ {
		c.Put(string(rune('a'+i%26))+string(rune(i)), 1e9, 0)
	}
	if c.Len() > 64 {
		t.Fatalf("cache unbounded: %d", c.Len())
	}
	c.Clear()
	if c.Len() != 0 {
		t.Fatal("clear")
	}
}

// TestRetryAfterIsExact checks the local cache's promise: when Remaining is
// 0, a 1-hit request does not fit before now+RetryAfter and does fit at it
// (nothing else charging meanwhile).
func TestRetryAfterIsExact(t *testing.T) {
	base := limitertest.Base()
	for _, alg := range []rules.Algorithm{rules.FixedWindow, rules.SlidingWindow, rules.TokenBucket} {
		for _, start := range []time.Duration{0, 7 * time.Second, 42*time.Second + 300*time.Millisecond} {
			m := limiter.NewMemory()
			key := limiter.Key("r:", alg, time.Minute, "d", "k", "v")
			fill := []limiter.Item{{Key: key, Algorithm: alg, Unit: time.Minute, Limit: 10, Burst: 4, Hits: 1, Enforce: limiter.Enforced}}
			res := make([]limiter.Result, 1)
			now := base.Add(start)
			// Charge until remaining hits 0, spread a little over time.
			for i := 0; i < 50 && (i == 0 || res[0].Remaining > 0); i++ {
				now = now.Add(100 * time.Millisecond)
				m.Check(context.Background(), now, fill, res)
			}
			if res[0].Remaining != 0 || res[0].RetryAfter <= 0 {
				t.Fatalf("%v: could not reach remaining 0: %+v", alg, res[0])
			}
			retry := res[0].RetryAfter
			probe := []limiter.Item{fill[0]}
			probe[0].Hits = 0 // check whether 1 hit would fit, without charging
			// A check-only request (hits 0) reports Remaining >= 1 exactly
			// when one more hit would fit.
			fits := func(at time.Time) bool {
				r := make([]limiter.Result, 1)
				m.Check(context.Background(), at, probe, r)
				return r[0].Remaining >= 1
			}
			if retry > time.Millisecond && fits(now.Add(retry-time.Millisecond)) {
				t.Errorf("%v start %v: 1 hit fits before RetryAfter %v", alg, start, retry)
			}
			if !fits(now.Add(retry)) {
				t.Errorf("%v start %v: 1 hit does not fit at RetryAfter %v", alg, start, retry)
			}
		}
	}
}
