package service

import (
	"context"
	"encoding/json"
	"regexp"
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

func TestQuotaMode(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := anchorFixture(t, b, nil)
		two := req("a", desc("q1", "x"), desc("q2", "x"))
		want := []string{
			"OK: OK OK",
			"OK: OVER_LIMIT OK", // q1 is out of quota, q2 still has some: allowed
			"OK: OVER_LIMIT OK",
			"OVER_LIMIT: OVER_LIMIT OVER_LIMIT", // every quota descriptor is over: denied
		}
		for i, w := range want {
			resp := f.call(t, two)
			if got := codesOf(resp); got != w {
				t.Fatalf("call %d: %s, want %s (%v)", i, got, w, resp)
			}
			if i == 1 {
				if h := headerMap(resp); h["Retry-After"] != "" {
					t.Fatalf("allowed request carries Retry-After: %v", h)
				}
			}
		}
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
	f := anchorFixture(t, limiter.NewMemory(), func(o *Options) { o.QuotaMode = true })
	f.call(t, req("a", desc("narrow", "g")))
	// narrow is now a quota descriptor: over, but the unmatched descriptor
	// (a quota descriptor too under the global switch) passes.
	if got := codesOf(f.call(t, req("a", desc("narrow", "g"), desc("nomatch", "x")))); got != "OK: OVER_LIMIT OK" {
		t.Fatalf("global quota, one passing: %s", got)
	}
	if got := codesOf(f.call(t, req("a", desc("narrow", "g")))); got != "OVER_LIMIT: OVER_LIMIT" {
		t.Fatalf("global quota, all over: %s", got)
	}
	// Unlimited descriptors are not quota descriptors.
	if got := codesOf(f.call(t, req("a", desc("narrow", "g"), desc("free", "x")))); got != "OVER_LIMIT: OVER_LIMIT OK" {
		t.Fatalf("global quota with unlimited: %s", got)
	}
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
