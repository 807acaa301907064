package redisbackend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter/limitertest"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

func newBackend(t *testing.T, srv *redistest.Server, mod func(*Options)) *Redis {
	t.Helper()
	client, cluster, err := NewClient(ClientConfig{URL: srv.URL(), PoolSize: 8, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Client: client, Cluster: cluster, Timeout: 500 * time.Millisecond, Registerer: prometheus.NewRegistry(),
		BreakerFailures: 3, BreakerCooldown: 200 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); client.Close() })
	return r
}

func TestSuiteOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	limitertest.Run(t, func(t *testing.T) limiter.Backend { return newBackend(t, srv, nil) })
}

func TestSuiteOnRedisClusterSplit(t *testing.T) {
	// Cluster splitting on a single node: every slot group is its own call,
	// which must give the same answers (the suite's keys fall in random
	// slots; the refund keeps rejected requests uncharged).
	srv := redistest.Start(t)
	limitertest.Run(t, func(t *testing.T) limiter.Backend { return newBackend(t, srv, func(o *Options) { o.Cluster = true }) })
	b := newBackend(t, srv, func(o *Options) { o.Cluster = true })
	it := []limiter.Item{
		{Key: limiter.Key("c:", rules.FixedWindow, time.Hour, "d", "a", "1"), Unit: time.Hour, Limit: 2, Hits: 1, Enforce: limiter.Enforced},
		{Key: limiter.Key("c:", rules.FixedWindow, time.Hour, "d", "b", "2"), Unit: time.Hour, Limit: 5, Hits: 1, Enforce: limiter.Enforced},
	}
	if Slot(it[0].Key) == Slot(it[1].Key) {
		t.Fatal("test keys share a slot; pick others")
	}
	res := make([]limiter.Result, 2)
	for i := 0; i < 2; i++ {
		if err := b.Check(context.Background(), time.Now(), it, res); err != nil {
			t.Fatal(err)
		}
	}
	if res[0].Remaining != 0 || res[1].Remaining != 3 || res[0].Over || res[1].Over {
		t.Fatalf("results %+v", res)
	}
}

func get(t *testing.T, srv *redistest.Server, args ...string) string {
	t.Helper()
	v, err := srv.Do(context.Background(), args...)
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	return strings.TrimPrefix(v, ":")
}

func TestOverLimitDoesNotInflateAndTTLSetOnce(t *testing.T) {
	srv := redistest.Start(t)
	b := newBackend(t, srv, nil)
	now := time.Now()
	it := []limiter.Item{{Key: limiter.Key("x:", rules.FixedWindow, time.Minute, "d", "k", "v"), Unit: time.Minute, Limit: 3, Hits: 1, Enforce: limiter.Enforced}}
	wk := limiter.WindowKey(it[0].Key, limiter.WindowStart(now, time.Minute))
	res := make([]limiter.Result, 1)
	b.Check(context.Background(), now, it, res)
	if ttl, _ := strconv.Atoi(get(t, srv, "TTL", wk)); ttl <= 0 || ttl > 60 {
		t.Fatalf("TTL after first hit = %d, want (0,60]", ttl)
	}
	get(t, srv, "EXPIRE", wk, "1000")
	for i := 0; i < 10; i++ {
		b.Check(context.Background(), now, it, res)
	}
	if v := get(t, srv, "GET", wk); v != "3" {
		t.Fatalf("counter = %s after 11 hits on a limit of 3, want 3 (over-limit hits must not count)", v)
	}
	if ttl, _ := strconv.Atoi(get(t, srv, "TTL", wk)); ttl < 900 {
		t.Fatalf("TTL = %d: later hits reset it (must be set once per window key)", ttl)
	}
}

func TestNoScriptRecovery(t *testing.T) {
	srv := redistest.Start(t)
	b := newBackend(t, srv, nil)
	it := []limiter.Item{{Key: limiter.Key("n:", rules.FixedWindow, time.Hour, "d", "k", "v"), Unit: time.Hour, Limit: 10, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	for i := 0; i < 3; i++ {
		get(t, srv, "SCRIPT", "FLUSH")
		if err := b.Check(context.Background(), time.Now(), it, res); err != nil {
			t.Fatalf("after SCRIPT FLUSH: %v", err)
		}
		if res[0].Remaining != uint32(9-i) {
			t.Fatalf("remaining %d", res[0].Remaining)
		}
	}
}

func TestBatchingSharesRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	b := newBackend(t, srv, func(o *Options) { o.Registerer = reg; o.Pipelines = 1; o.BatchWait = 2 * time.Millisecond })
	const callers, per = 32, 20
	var wg sync.WaitGroup
	var errs atomic.Int64
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			res := make([]limiter.Result, 1)
			for i := 0; i < per; i++ {
				it := []limiter.Item{{Key: limiter.Key("b:", rules.FixedWindow, time.Hour, "d", "k", fmt.Sprint(c)), Unit: time.Hour, Limit: 1000, Hits: 1, Enforce: limiter.Enforced}}
				if err := b.Check(context.Background(), time.Now(), it, res); err != nil {
					errs.Add(1)
				}
			}
		}(c)
	}
	wg.Wait()
	if errs.Load() > 0 {
		t.Fatalf("%d errors", errs.Load())
	}
	var m dto.Metric
	b.roundTrips.Write(&m)
	rt := m.GetCounter().GetValue()
	if rt >= callers*per/2 {
		t.Fatalf("%v round trips for %d requests: batching is not sharing pipelines", rt, callers*per)
	}
	t.Logf("%d requests in %v round trips", callers*per, rt)
}

func TestRedisKilledAndRestarted(t *testing.T) {
	srv := redistest.Start(t)
	b := newBackend(t, srv, nil)
	it := []limiter.Item{{Key: limiter.Key("k:", rules.FixedWindow, time.Hour, "d", "k", "v"), Unit: time.Hour, Limit: 100, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	// Every check uses one request time, as a caller with its own clock
	// may: the breaker times its cooldown by its own clock, not by the
	// request's (with the request's, it stayed open for good).
	now := time.Now()
	if err := b.Check(context.Background(), now, it, res); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	// Failures come back bounded by the timeout, then the breaker answers at once.
	deadline := time.Now().Add(20 * time.Second)
	for {
		start := time.Now()
		err := b.Check(context.Background(), now, it, res)
		took := time.Since(start)
		if err == nil {
			t.Fatal("check succeeded with redis down")
		}
		if !errors.Is(err, limiter.ErrUnavailable) {
			t.Fatalf("error %v is not ErrUnavailable", err)
		}
		if took > 2*time.Second {
			t.Fatalf("a call waited %v on a dead redis", took)
		}
		if b.br.open() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("breaker never opened")
		}
	}
	if err := b.Ping(context.Background()); err == nil {
		t.Fatal("ping succeeded with redis down")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// Recovers by itself (the restarted server has no scripts: NOSCRIPT path).
	for {
		err := b.Check(context.Background(), now, it, res)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never recovered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res[0].Remaining != 99 {
		t.Fatalf("remaining %d after restart (fresh redis), want 99", res[0].Remaining)
	}
}

func TestSlot(t *testing.T) {
	// Known values from the Redis Cluster spec.
	if Slot("123456789") != int(0x31C3&16383) {
		t.Fatalf("crc16 wrong: %d", Slot("123456789"))
	}
	if Slot("{user1000}.following") != Slot("{user1000}.followers") || Slot("foo{}{bar}") != int(crc16("foo{}{bar}")&16383) {
		t.Fatal("hash tags wrong")
	}
	if Slot("{abc}:1") != Slot("{abc}:2") {
		t.Fatal("window keys of one descriptor must share a slot")
	}
}

// TestCheckBatchIsOneRoundTripAndExact: 40 requests for one key under a
// limit of 25, plus a two-item request whose second item is already over,
// all in one CheckBatch: exactly 25 admitted in order, the rejected
// two-item request charges neither item, and the whole batch is one round
// trip.
func TestCheckBatchIsOneRoundTripAndExact(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	b := newBackend(t, srv, func(o *Options) { o.Registerer = reg; o.Pipelines = 1; o.BatchSize = 256 })
	now := time.Now()
	key := func(v string) string { return limiter.Key("cb:", rules.FixedWindow, time.Hour, "d", "k", v) }
	item := func(v string, limit uint32) limiter.Item {
		return limiter.Item{Key: key(v), Unit: time.Hour, Limit: limit, Hits: 1, Enforce: limiter.Enforced}
	}
	var reqs []limiter.Request
	for range 40 {
		reqs = append(reqs, limiter.Request{Now: now, Items: []limiter.Item{item("hot", 25)}, Results: make([]limiter.Result, 1)})
	}
	// "full" allows 0 more: the pair is rejected and "side" is not charged.
	reqs = append(reqs, limiter.Request{Now: now, Items: []limiter.Item{item("side", 10), item("full", 0)}, Results: make([]limiter.Result, 2)})
	// Load the script first (a fresh Redis answers NOSCRIPT once).
	if err := b.Check(context.Background(), now, []limiter.Item{item("warm", 10)}, make([]limiter.Result, 1)); err != nil {
		t.Fatal(err)
	}
	var m0 dto.Metric
	b.roundTrips.Write(&m0)
	b.CheckBatch(context.Background(), reqs)
	var m1 dto.Metric
	b.roundTrips.Write(&m1)
	admitted := 0
	for i, r := range reqs[:40] {
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		if !r.Results[0].Over {
			if i != admitted {
				t.Fatalf("request %d admitted after %d: not in order", i, admitted)
			}
			admitted++
		}
	}
	if admitted != 25 {
		t.Fatalf("%d admitted, want exactly 25", admitted)
	}
	pair := reqs[40]
	if pair.Err != nil || pair.Results[0].Charged || !pair.Results[1].Over {
		t.Fatalf("pair: err %v results %+v: want rejected, nothing charged", pair.Err, pair.Results)
	}
	ws := limiter.WindowStart(now, time.Hour)
	if v := get(t, srv, "GET", limiter.WindowKey(key("side"), ws)); v != "" && v != "0" {
		t.Fatalf("side counter %q after a rejected request, want unset", v)
	}
	if rt := m1.GetCounter().GetValue() - m0.GetCounter().GetValue(); rt != 1 {
		t.Fatalf("%v round trips for one batch, want 1", rt)
	}
}

// slotKey returns a counter key for value v+"-"+n with the smallest n whose
// hash slot is (same) or is not (!same) slot.
func slotKey(prefix, v string, slot int, same bool) string {
	for n := 0; ; n++ {
		k := limiter.Key(prefix, rules.FixedWindow, time.Hour, "d", "k", fmt.Sprintf("%s-%d", v, n))
		if (Slot(k) == slot) == same {
			return k
		}
	}
}

// quotaGroupReadBack: a request denied because all its quota group members
// are over leaves its ordinary counter as it was (read back from Redis); a
// request with one member that fits charges as usual. In Cluster mode the
// members sit in different hash slots (split: ord shares q1's slot, so a
// part that held only over members must not reject alone) or in one slot.
func quotaGroupReadBack(t *testing.T, b *Redis, getCounter func(key string) string, prefix string, oneSlot bool) {
	t.Helper()
	now := time.Now()
	q1 := limiter.Key(prefix, rules.FixedWindow, time.Hour, "d", "k", "q1")
	s1 := Slot(q1)
	q2, ord := slotKey(prefix, "q2", s1, false), slotKey(prefix, "ord", s1, true)
	if oneSlot {
		q2, ord = slotKey(prefix, "q2", s1, true), slotKey(prefix, "ord", s1, false)
	}
	q3 := slotKey(prefix, "q3", s1, false)
	quota := func(k string, limit uint32) limiter.Item {
		return limiter.Item{Key: k, Unit: time.Hour, Limit: limit, Hits: 1, Enforce: limiter.QuotaMember}
	}
	ordItem := limiter.Item{Key: ord, Unit: time.Hour, Limit: 10, Hits: 1, Enforce: limiter.Enforced}
	window := func(k string) string { return limiter.WindowKey(k, limiter.WindowStart(now, time.Hour)) }
	check := func(items []limiter.Item) []limiter.Result {
		t.Helper()
		res := make([]limiter.Result, len(items))
		if err := b.Check(context.Background(), now, items, res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := check([]limiter.Item{quota(q1, 1), quota(q2, 1), ordItem}); res[0].Over || res[1].Over || res[2].Over {
		t.Fatalf("first request: %+v", res)
	}
	res := check([]limiter.Item{quota(q1, 1), quota(q2, 1), ordItem})
	if !res[0].Over || !res[1].Over || res[2].Over || res[2].Charged || res[2].Remaining != 9 {
		t.Fatalf("both quotas over: %+v, want both over, ord fitting but not charged (9 left)", res)
	}
	if v := getCounter(window(ord)); v != "1" {
		t.Fatalf("ord counter %q after a request denied by its quotas, want 1", v)
	}
	res = check([]limiter.Item{quota(q1, 1), quota(q3, 5), ordItem})
	if !res[0].Over || res[1].Over || !res[2].Charged || res[2].Remaining != 8 {
		t.Fatalf("one quota over, one fitting: %+v, want kept and ord charged (8 left)", res)
	}
	if v, w := getCounter(window(ord)), getCounter(window(q3)); v != "2" || w != "1" {
		t.Fatalf("ord, q3 counters %q, %q after a kept request, want 2, 1", v, w)
	}
	if v := getCounter(window(q1)); v != "1" {
		t.Fatalf("q1 counter %q: an over member was charged", v)
	}
}

func TestQuotaGroupDeniedChargesNothing(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name             string
		cluster, oneSlot bool
	}{{"single", false, false}, {"cluster-split", true, false}, {"cluster-one-slot", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, srv, func(o *Options) { o.Cluster = tc.cluster })
			quotaGroupReadBack(t, b, func(k string) string { return get(t, srv, "GET", k) }, "qg-"+tc.name+":", tc.oneSlot)
		})
	}
}
