package service

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// Behaviour of newer envoyproxy/ratelimit rule fields, through the real
// gRPC server on the memory backend and on a real redis-server.

const anchorRules = `
domain: a
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: docs
    value: docs/*
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: path
    value: /api/*/items*
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: tenant
    value: t*
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 2}
  - key: q1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
    metadata: {backend: {name: one, weight: 1}, first: q1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 3}
    metadata: {backend: {name: two, zone: z2}, first: q2}
  - key: sq
    quota_mode: true
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: sh
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 100}
    metadata: {plain: true}
  - key: narrow
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
    metadata: {free: true}
  - key: tenant_id
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: detail
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 100}
`

// anchorFixture serves anchorRules with the clock pinned 30 s into a window
// that starts 0–60 s from now, so no window boundary falls inside a test
// (counts would reset there) and no counter expires during it.
func anchorFixture(t *testing.T, b limiter.Backend, mod func(*Options)) *fixture {
	t.Helper()
	pinned := time.Now().Truncate(time.Minute).Add(90 * time.Second)
	f := newFixture(t, b, func(o *Options) {
		o.Now = func() time.Time { return pinned }
		if mod != nil {
			mod(o)
		}
	})
	cfg, err := rules.Parse([]rules.File{{Name: "anchor.yaml", Data: []byte(anchorRules)}})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.SetRules(cfg)
	return f
}

func codesOf(resp *rlsv3.RateLimitResponse) string {
	s := resp.GetOverallCode().String() + ":"
	for _, st := range resp.GetStatuses() {
		s += " " + st.GetCode().String()
	}
	return s
}

func TestShareThresholdSharesOneCounter(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := anchorFixture(t, b, nil)
		// Three different values under files/* draw from one counter of 3.
		for i, v := range []string{"files/a.pdf", "files/b.csv", "files/c.txt"} {
			resp := f.call(t, req("a", desc("files", v)))
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != uint32(2-i) {
				t.Fatalf("%s: %v", v, resp)
			}
		}
		if resp := f.call(t, req("a", desc("files", "files/d"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("4th value of the shared counter: %v", resp)
		}
		// Without share_threshold every value has its own counter.
		for _, v := range []string{"docs/a", "docs/b"} {
			if resp := f.call(t, req("a", desc("docs", v))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("%s: %v", v, resp)
			}
		}
		if resp := f.call(t, req("a", desc("docs", "docs/a"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("docs/a twice: %v", resp)
		}
		// A shared wildcard above a bare key: the tenant part is shared, the
		// user part is per value.
		for _, tv := range [][2]string{{"t1", "u1"}, {"t2", "u1"}} {
			if resp := f.call(t, req("a", desc("tenant", tv[0], "user", tv[1]))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("%v: %v", tv, resp)
			}
		}
		if resp := f.call(t, req("a", desc("tenant", "t3", "user", "u1"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("t*/u1 third time: %v", resp)
		}
		if resp := f.call(t, req("a", desc("tenant", "t3", "user", "u2"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("t*/u2: %v", resp)
		}
		// Middle and multiple wildcards match like the anchor.
		if resp := f.call(t, req("a", desc("path", "/api/v1/items/7"))); resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() != 1 {
			t.Fatalf("middle wildcard: %v", resp)
		}
		if resp := f.call(t, req("a", desc("path", "/api/v1/things"))); resp.GetStatuses()[0].GetCurrentLimit() != nil {
			t.Fatalf("middle wildcard must not match: %v", resp)
		}
	})
}

// TestShareThresholdRedisKeys reads the counters back from redis-server:
// one key for all values of the shared wildcard.
func TestShareThresholdRedisKeys(t *testing.T) {
	srv := redistest.Start(t)
	f := anchorFixture(t, redisBackend(t, srv), nil)
	for _, v := range []string{"files/a", "files/b", "files/c"} {
		f.call(t, req("a", desc("files", v)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Counter keys length-prefix every part: the shared one ends in
	// "7:files/*}" (the pattern), and no key names a request value.
	for pattern, want := range map[string]string{"*": "*1", `*7:files/\*}*`: "*1", "*files/a*": "*0"} {
		got, err := srv.Do(ctx, "KEYS", pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("KEYS %s: %s, want %s", pattern, got, want)
		}
	}
}

// remaining is the descriptor's limit_remaining, read with a check-only
// call (hits_addend 0: nothing charged).
func (f *fixture) remaining(t *testing.T, domain string, kv ...string) uint32 {
	t.Helper()
	d := desc(kv...)
	d.HitsAddend = wrapperspb.UInt64(0)
	return f.call(t, req(domain, d)).GetStatuses()[0].GetLimitRemaining()
}

func TestQuotaMode(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		// With the local cache the last call is decided without the
		// backend (both quotas are known over); without it, by the backend.
		for _, cache := range []bool{true, false} {
			v := fmt.Sprint("x", cache)
			f := anchorFixture(t, b, func(o *Options) {
				if !cache {
					o.LocalCache = nil
				}
			})
			two := req("a", desc("q1", v), desc("q2", v), desc("plain", v), desc("sh", v))
			want := []string{
				"OK: OK OK OK OK",
				"OK: OVER_LIMIT OK OK OK", // q1 is out of quota, q2 still has some: allowed
				"OK: OVER_LIMIT OK OK OK",
				"OVER_LIMIT: OVER_LIMIT OVER_LIMIT OK OK", // every quota descriptor is over: denied
			}
			for i, w := range want {
				resp := f.call(t, two)
				if got := codesOf(resp); got != w {
					t.Fatalf("cache %v call %d: %s, want %s (%v)", cache, i, got, w, resp)
				}
				if i == 1 {
					if h := headerMap(resp); h["Retry-After"] != "" {
						t.Fatalf("allowed request carries Retry-After: %v", h)
					}
				}
			}
			// The denied request charged none of its descriptors: the
			// ordinary and the shadow one hold the 3 allowed requests.
			if p, s := f.remaining(t, "a", "plain", v), f.remaining(t, "a", "sh", v); p != 97 || s != 97 {
				t.Fatalf("cache %v: plain, sh remaining %d, %d after 3 allowed and 1 denied request, want 97, 97", cache, p, s)
			}
		}
		f := anchorFixture(t, b, nil)
		// An enforced descriptor over its limit still denies, whatever the quotas.
		f.call(t, req("a", desc("narrow", "n")))
		if got := codesOf(f.call(t, req("a", desc("q1", "y"), desc("narrow", "n")))); got != "OVER_LIMIT: OK OVER_LIMIT" {
			t.Fatalf("quota + enforced over: %s", got)
		}
		// The rejected request charged no quota: q1=y still has its one hit.
		if got := codesOf(f.call(t, req("a", desc("q1", "y")))); got != "OK: OK" {
			t.Fatalf("q1=y after a rejected request: %s", got)
		}
	})
}

// TestSingleQuotaDeniedChargesNothing: a request whose only quota
// descriptor is over is denied, and (as every denied request here) charges
// none of its descriptors.
func TestSingleQuotaDeniedChargesNothing(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := anchorFixture(t, b, func(o *Options) { o.LocalCache = nil })
		r := req("a", desc("q1", "s"), desc("plain", "p"))
		if got := codesOf(f.call(t, r)); got != "OK: OK OK" {
			t.Fatalf("first: %s", got)
		}
		for i := 0; i < 3; i++ {
			if got := codesOf(f.call(t, r)); got != "OVER_LIMIT: OVER_LIMIT OK" {
				t.Fatalf("q1 over: %s", got)
			}
		}
		if resp := f.call(t, req("a", desc("plain", "p"))); resp.GetStatuses()[0].GetLimitRemaining() != 98 {
			t.Fatalf("plain charged by denied requests: %v", resp)
		}
	})
}

func TestGlobalQuotaMode(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		// With the local cache narrow is known over without the backend
		// after the first call; without it, the backend decides.
		for _, cache := range []bool{true, false} {
			g := fmt.Sprint("g", cache)
			f := anchorFixture(t, b, func(o *Options) {
				o.QuotaMode = true
				if !cache {
					o.LocalCache = nil
				}
			})
			f.call(t, req("a", desc("narrow", g)))
			// narrow is now a quota descriptor: over, but the unmatched
			// descriptor (a quota descriptor too under the global switch)
			// passes, so the quotas never deny: the request is kept.
			for i := 0; i < 2; i++ {
				if got := codesOf(f.call(t, req("a", desc("narrow", g), desc("nomatch", "x")))); got != "OK: OVER_LIMIT OK" {
					t.Fatalf("cache %v: global quota, one passing: %s", cache, got)
				}
				if got := codesOf(f.call(t, req("a", desc("narrow", g), desc("nomatch", "x"), desc("q1", g)))); got != "OK: OVER_LIMIT OK OK" && i == 0 {
					t.Fatalf("cache %v: global quota, one passing, one fitting: %s", cache, got)
				}
			}
			if got := codesOf(f.call(t, req("a", desc("narrow", g)))); got != "OVER_LIMIT: OVER_LIMIT" {
				t.Fatalf("cache %v: global quota, all over: %s", cache, got)
			}
			if got := codesOf(f.call(t, req("a", desc("narrow", g), desc("q1", g)))); got != "OVER_LIMIT: OVER_LIMIT OVER_LIMIT" {
				t.Fatalf("cache %v: global quota, two all over: %s", cache, got)
			}
			// Unlimited descriptors are not quota descriptors.
			if got := codesOf(f.call(t, req("a", desc("narrow", g), desc("free", "x")))); got != "OVER_LIMIT: OVER_LIMIT OK" {
				t.Fatalf("cache %v: global quota with unlimited: %s", cache, got)
			}
		}
	})
}

// TestQuotaShadowMixes: a shadow quota descriptor never counts as over, so
// its quota group cannot deny (like an unmatched descriptor under the
// global switch): the request is kept and charged as usual. A shadow
// ordinary descriptor does not keep a request whose quotas are all over
// (TestQuotaMode checks it is not charged then).
func TestQuotaShadowMixes(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		for _, cache := range []bool{true, false} {
			m := fmt.Sprint("m", cache)
			f := anchorFixture(t, b, func(o *Options) {
				if !cache {
					o.LocalCache = nil
				}
			})
			f.call(t, req("a", desc("q1", m), desc("sq", m)))
			for i := 0; i < 2; i++ {
				if got := codesOf(f.call(t, req("a", desc("q1", m), desc("sq", m), desc("plain", m)))); got != "OK: OVER_LIMIT OK OK" {
					t.Fatalf("cache %v: quota over + shadow quota over: %s", cache, got)
				}
			}
			if p := f.remaining(t, "a", "plain", m); p != 98 {
				t.Fatalf("cache %v: plain remaining %d after 2 kept requests, want 98", cache, p)
			}
			if got := codesOf(f.call(t, req("a", desc("q1", m), desc("sh", m)))); got != "OVER_LIMIT: OVER_LIMIT OK" {
				t.Fatalf("cache %v: only quota over + shadow: %s", cache, got)
			}
			if s := f.remaining(t, "a", "sh", m); s != 100 {
				t.Fatalf("cache %v: sh remaining %d after a denied request, want 100", cache, s)
			}
		}
	})
}

// recordingBackend keeps the items and results of the last Check.
type recordingBackend struct {
	limiter.Backend
	mu      sync.Mutex
	items   []limiter.Item
	results []limiter.Result
}

func (r *recordingBackend) Check(ctx context.Context, now time.Time, items []limiter.Item, res []limiter.Result) error {
	err := r.Backend.Check(ctx, now, items, res)
	r.mu.Lock()
	r.items, r.results = append(r.items[:0], items...), append(r.results[:0], res...)
	r.mu.Unlock()
	return err
}

// take returns the last Check's items and results and forgets them.
func (r *recordingBackend) take() ([]limiter.Item, []limiter.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	items, results := r.items, r.results
	r.items, r.results = nil, nil
	return items, results
}

// TestOverallCodeMatchesBackendDecision asserts, over random mixes of
// ordinary, quota, shadow, shadow quota, unlimited and unmatched
// descriptors (some with hits_addend 0–2), with and without the global
// quota mode and the local cache, that the service's overall_code and the
// backend's decision agree: OVER_LIMIT → the backend charged nothing
// (rejected the request, or was not asked); OK → the backend charged every
// item that fit.
func TestOverallCodeMatchesBackendDecision(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		keys := []string{"q1", "q2", "sq", "sh", "plain", "narrow", "free", "nomatch"}
		for _, quotaMode := range []bool{false, true} {
			for _, cache := range []bool{false, true} {
				tag := fmt.Sprint(quotaMode, cache)
				rb := &recordingBackend{Backend: b}
				f := anchorFixture(t, rb, func(o *Options) {
					o.QuotaMode = quotaMode
					if !cache {
						o.LocalCache = nil
					}
				})
				rng := rand.New(rand.NewPCG(7, 11))
				var denied, quotaDenied, kept int
				for n := 0; n < 300; n++ {
					var ds []*rlcommon.RateLimitDescriptor
					if rng.IntN(2) == 0 { // often a quota pair, so groups are all over
						ds = append(ds, desc("q1", fmt.Sprint(tag, rng.IntN(3))), desc("q2", fmt.Sprint(tag, rng.IntN(3))))
					}
					for k := 1 + rng.IntN(3); k > 0; k-- {
						d := desc(keys[rng.IntN(len(keys))], fmt.Sprint(tag, rng.IntN(3)))
						if rng.IntN(4) == 0 {
							d.HitsAddend = wrapperspb.UInt64(uint64(rng.IntN(3)))
						}
						ds = append(ds, d)
					}
					resp := f.call(t, req("a", ds...))
					over := resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT
					items, results := rb.take()
					for i := range items {
						fits := !results[i].Over && items[i].Hits > 0
						if over && results[i].Charged || !over && fits && !results[i].Charged {
							t.Fatalf("quota mode %v, cache %v, request %d %v: %s but item %d (%+v) → %+v",
								quotaMode, cache, n, ds, codesOf(resp), i, items[i], results[i])
						}
					}
					if !over {
						kept++
						continue
					}
					denied++
					// Denied by its quotas alone, with an ordinary or shadow
					// descriptor that passed: the case the quota rule of the
					// backend (or of the local cache) exists for.
					byQuota, passing := true, false
					for i, st := range resp.GetStatuses() {
						switch k := ds[i].GetEntries()[0].GetKey(); {
						case st.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT && k != "q1" && k != "q2":
							byQuota = false
						case st.GetCode() == rlsv3.RateLimitResponse_OK && (k == "plain" || k == "sh"):
							passing = true
						}
					}
					if byQuota && passing {
						quotaDenied++
					}
				}
				t.Logf("quota mode %v, cache %v: %d kept, %d denied (%d by quotas beside a passing descriptor)", quotaMode, cache, kept, denied, quotaDenied)
				if kept == 0 || denied == 0 || !quotaMode && quotaDenied == 0 {
					t.Fatalf("the mix did not exercise both outcomes")
				}
			}
		}
	})
}

func TestDynamicMetadata(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := anchorFixture(t, b, func(o *Options) { o.DynamicMetadata = true })
		override := desc("o", "v")
		override.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 7, Unit: typev3.RateLimitUnit_HOUR}
		override.HitsAddend = wrapperspb.UInt64(1)
		r := req("a", desc("q1", "m"), desc("q2", "m"), desc("free", "f"), override)
		r.HitsAddend = 1
		// Both quotas pass: their metadata merge in request order (q1 first:
		// "first" keeps q1's value, the backend structs merge key by key).
		md := jsonOf(t, f.call(t, r).GetDynamicMetadata())
		want := `{"descriptors":[{"entries":["q1=m"]},{"entries":["q2=m"]},{"entries":["free=f"]},{"entries":["o=v"],"hitsAddend":1,"limit":"LIMIT"}],` +
			`"domain":"a","hitsAddend":1,"metadata":{"backend":{"name":"one","weight":1,"zone":"z2"},"first":"q1"}}`
		if md != want {
			t.Fatalf("dynamic metadata\n got %s\nwant %s", md, want)
		}
		// The merge did not change q1's rule metadata (no "zone" from q2).
		md = jsonOf(t, f.call(t, req("a", desc("q1", "other"))).GetDynamicMetadata())
		if want := `{"descriptors":[{"entries":["q1=other"]}],"domain":"a","metadata":{"backend":{"name":"one","weight":1},"first":"q1"}}`; md != want {
			t.Fatalf("q1 alone\n got %s\nwant %s", md, want)
		}
		// q1 is now over: only q2's metadata is returned (unlimited "free"
		// never contributes, as in the anchor), and the rule's metadata was
		// not changed by the earlier merge.
		resp := f.call(t, req("a", desc("q1", "m"), desc("q2", "m"), desc("free", "f")))
		md = jsonOf(t, resp.GetDynamicMetadata())
		want = `{"descriptors":[{"entries":["q1=m"]},{"entries":["q2=m"]},{"entries":["free=f"]}],"domain":"a","metadata":{"backend":{"name":"two","zone":"z2"},"first":"q2"}}`
		if md != want || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("after q1 is over\n got %s (%s)\nwant %s", md, codesOf(resp), want)
		}
		// Unknown domain: the request part only.
		md = jsonOf(t, f.call(t, req("nodomain", desc("k", "v"))).GetDynamicMetadata())
		if md != `{"descriptors":[{"entries":["k=v"]}],"domain":"nodomain"}` {
			t.Fatalf("unknown domain: %s", md)
		}
	})
	f := anchorFixture(t, limiter.NewMemory(), nil)
	if md := f.call(t, req("a", desc("q1", "m"))).GetDynamicMetadata(); md != nil {
		t.Fatalf("dynamic metadata without the switch: %v", md)
	}
}

// jsonOf renders a Struct as compact JSON with sorted keys (protojson's
// whitespace is deliberately unstable); a limit override's text format (not
// byte-stable either) is replaced by LIMIT.
func jsonOf(t *testing.T, m *structpb.Struct) string {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if b, err = json.Marshal(v); err != nil {
		t.Fatal(err)
	}
	return limitRE.ReplaceAllString(string(b), `"limit":"LIMIT"`)
}

var limitRE = regexp.MustCompile(`"limit":"[^"]*"`)

func TestValueToMetricBounded(t *testing.T) {
	f := anchorFixture(t, limiter.NewMemory(), func(o *Options) { o.MaxMetricValues = 3 })
	for i := 0; i < 5; i++ {
		v := string(rune('a' + i))
		f.call(t, req("a", desc("tenant_id", v)))
		f.call(t, req("a", desc("detail", v)))
	}
	for _, rule := range []string{"tenant_id_a", "tenant_id_b", "tenant_id_c", "detail_a", "detail_b", "detail_c"} {
		if v := f.metric(t, "rls_rule_hits_total", map[string]string{"domain": "a", "rule": rule, "result": "total"}); v != 1 {
			t.Errorf("%s total = %v, want 1", rule, v)
		}
	}
	for _, rule := range []string{"tenant_id" + OverflowSuffix, "detail" + OverflowSuffix} {
		if v := f.metric(t, "rls_rule_hits_total", map[string]string{"domain": "a", "rule": rule, "result": "total"}); v != 2 {
			t.Errorf("%s total = %v, want 2", rule, v)
		}
	}
	if v := f.metric(t, "rls_rule_hits_total", map[string]string{"domain": "a", "rule": "tenant_id_e", "result": "total"}); v != 0 {
		t.Errorf("a label beyond the bound exists: %v", v)
	}
	// A value already admitted keeps its own label.
	f.call(t, req("a", desc("tenant_id", "a")))
	if v := f.metric(t, "rls_rule_hits_total", map[string]string{"domain": "a", "rule": "tenant_id_a", "result": "total"}); v != 2 {
		t.Errorf("tenant_id_a total = %v, want 2", v)
	}
}
