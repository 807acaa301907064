package service

import (
	"context"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/redisbackend"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

const testRules = `
domain: test
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: api
    rate_limit: {name: general, unit: hour, requests_per_unit: 3}
  - key: api_key
    value: vip
    rate_limit:
      unit: hour
      requests_per_unit: 1000
      replaces: [{name: general}]
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: internal
    rate_limit: {unlimited: true}
  - key: banned
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: wide
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: narrow
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: bucket
    rate_limit: {unit: hour, requests_per_unit: 3600, algorithm: token_bucket, burst: 2}
`

// countingBackend counts calls reaching the real backend underneath.
type countingBackend struct {
	limiter.Backend
	calls atomic.Int64
	fail  atomic.Bool
}

func (c *countingBackend) Check(ctx context.Context, now time.Time, items []limiter.Item, res []limiter.Result) error {
	c.calls.Add(1)
	if c.fail.Load() {
		return limiter.ErrUnavailable
	}
	return c.Backend.Check(ctx, now, items, res)
}

type fixture struct {
	svc     *Service
	backend *countingBackend
	client  rlsv3.RateLimitServiceClient
	reg     *prometheus.Registry
}

func newFixture(t *testing.T, b limiter.Backend, mod func(*Options)) *fixture {
	t.Helper()
	cfg, err := rules.Parse([]rules.File{{Name: "test.yaml", Data: []byte(testRules)}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{backend: &countingBackend{Backend: b}, reg: prometheus.NewRegistry()}
	o := Options{Log: slog.New(slog.DiscardHandler), Backend: f.backend, KeyPrefix: "t:", LocalCache: limiter.NewOverCache(1000), Registerer: f.reg, ResponseHeaders: true,
		Now: midWindow()}
	if mod != nil {
		mod(&o)
	}
	f.svc, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.svc.SetRules(cfg)
	f.client = serve(t, f.svc)
	return f
}

// midWindow is a clock stopped in the middle of the current second, minute
// and hour (a fresh run id keeps keys of earlier runs apart): no window
// boundary can fall inside a test that counts "exactly N, then over".
func midWindow() func() time.Time {
	t := time.Now().Truncate(time.Hour).Add(30*time.Minute + 30*time.Second + 500*time.Millisecond)
	return func() time.Time { return t }
}

func serve(t *testing.T, svc rlsv3.RateLimitServiceServer) rlsv3.RateLimitServiceClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(gs, svc)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rlsv3.NewRateLimitServiceClient(cc)
}

func desc(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func (f *fixture) call(t *testing.T, req *rlsv3.RateLimitRequest) *rlsv3.RateLimitResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.client.ShouldRateLimit(ctx, req)
	if err != nil {
		t.Fatalf("ShouldRateLimit: %v", err)
	}
	return resp
}

func req(domain string, ds ...*rlcommon.RateLimitDescriptor) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: domain, Descriptors: ds}
}

func (f *fixture) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

func headerMap(resp *rlsv3.RateLimitResponse) map[string]string {
	h := map[string]string{}
	for _, hv := range resp.GetResponseHeadersToAdd() {
		h[hv.GetKey()] = hv.GetValue()
	}
	return h
}

// backends runs a test on the memory backend and on a real redis-server.
func backends(t *testing.T, fn func(t *testing.T, b limiter.Backend)) {
	t.Run("memory", func(t *testing.T) { fn(t, limiter.NewMemory()) })
	t.Run("redis", func(t *testing.T) { fn(t, redisBackend(t, redistest.Start(t))) })
}

// redisBackend is a Redis backend on srv, closed when the test ends.
func redisBackend(t *testing.T, srv *redistest.Server) *redisbackend.Redis {
	t.Helper()
	client, cluster, err := redisbackend.NewClient(redisbackend.ClientConfig{URL: srv.URL(), PoolSize: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := redisbackend.New(redisbackend.Options{Client: client, Cluster: cluster, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rb.Close(); client.Close() })
	return rb
}

func TestFixedWindowAnswers(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := newFixture(t, b, nil)
		for i := 0; i < 5; i++ {
			resp := f.call(t, req("test", desc("user", "alice")))
			st := resp.GetStatuses()[0]
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || st.GetLimitRemaining() != uint32(4-i) ||
				st.GetCurrentLimit().GetRequestsPerUnit() != 5 || st.GetCurrentLimit().GetUnit() != rlsv3.RateLimitResponse_RateLimit_MINUTE {
				t.Fatalf("call %d: %v", i, resp)
			}
			d := st.GetDurationUntilReset().AsDuration()
			if d <= 0 || d > time.Minute {
				t.Fatalf("duration_until_reset %v", d)
			}
			if h := headerMap(resp); h["RateLimit-Limit"] != "5" || h["RateLimit-Remaining"] != strconvI(4-i) || h["Retry-After"] != "" {
				t.Fatalf("headers %v", h)
			}
		}
		resp := f.call(t, req("test", desc("user", "alice")))
		if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || resp.GetStatuses()[0].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("6th call: %v", resp)
		}
		if h := headerMap(resp); h["Retry-After"] == "" || h["RateLimit-Remaining"] != "0" {
			t.Fatalf("over-limit headers %v", h)
		}
		// Another user has its own counter.
		if resp := f.call(t, req("test", desc("user", "bob"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("bob: %v", resp)
		}
		// Over-limit answers now come from the local cache: the backend is not called.
		before := f.backend.calls.Load()
		for i := 0; i < 5; i++ {
			if resp := f.call(t, req("test", desc("user", "alice"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
				t.Fatalf("cached: %v", resp)
			}
		}
		if n := f.backend.calls.Load() - before; n != 0 {
			t.Fatalf("backend called %d times for keys known over limit", n)
		}
		lbl := map[string]string{"domain": "test", "rule": "user"}
		lbl["result"] = "over_limit_local_cache"
		// The 5th call left the counter at its limit, so the 6th was already
		// answered from the cache.
		if v := f.metric(t, "rls_rule_hits_total", lbl); v != 6 {
			t.Fatalf("over_limit_local_cache = %v", v)
		}
		lbl["result"] = "over_limit"
		if v := f.metric(t, "rls_rule_hits_total", lbl); v != 6 {
			t.Fatalf("over_limit = %v", v)
		}
		lbl["result"] = "total"
		if v := f.metric(t, "rls_rule_hits_total", lbl); v != 12 {
			t.Fatalf("total = %v", v)
		}
	})
}

func strconvI(i int) string { return string(rune('0' + i)) }

func TestUnknownDomainAndNoRule(t *testing.T) {
	f := newFixture(t, limiter.NewMemory(), nil)
	for _, r := range []*rlsv3.RateLimitRequest{req("nope", desc("user", "a"), desc("x", "y")), req("test", desc("nokey", "a"), desc("user", "a", "extra", "b"))} {
		resp := f.call(t, r)
		if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || len(resp.GetStatuses()) != 2 {
			t.Fatalf("%v", resp)
		}
		for _, st := range resp.GetStatuses() {
			if st.GetCode() != rlsv3.RateLimitResponse_OK || st.GetCurrentLimit() != nil {
				t.Fatalf("status %v", st)
			}
		}
	}
	if f.backend.calls.Load() != 0 {
		t.Fatal("backend called without a matching rule")
	}
	if v := f.metric(t, "rls_domain_not_found_total", nil); v != 1 {
		t.Fatalf("domain_not_found = %v", v)
	}
}

func TestHitsAddend(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := newFixture(t, b, nil)
		r := req("test", desc("user", "h"))
		r.HitsAddend = 3
		if resp := f.call(t, r); resp.GetStatuses()[0].GetLimitRemaining() != 2 {
			t.Fatalf("request hits 3: %v", resp)
		}
		// Per-descriptor hits_addend wins over the request's, even 0 (check only).
		d := desc("user", "h")
		d.HitsAddend = wrapperspb.UInt64(0)
		r = req("test", d)
		r.HitsAddend = 50
		if resp := f.call(t, r); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != 2 {
			t.Fatalf("descriptor hits 0: %v", resp)
		}
		d.HitsAddend = wrapperspb.UInt64(3)
		if resp := f.call(t, r); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || resp.GetStatuses()[0].GetLimitRemaining() != 2 {
			t.Fatalf("descriptor hits 3 over 2 remaining: %v", resp)
		}
		d.HitsAddend = wrapperspb.UInt64(2)
		if resp := f.call(t, r); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != 0 {
			t.Fatalf("descriptor hits 2: %v", resp)
		}
	})
}

func TestReplacesShadowUnlimitedBanned(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := newFixture(t, b, nil)
		// vip replaces "general": general is neither checked nor charged.
		for i := 0; i < 5; i++ {
			resp := f.call(t, req("test", desc("api", "x"), desc("api_key", "vip")))
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCurrentLimit() != nil ||
				resp.GetStatuses()[1].GetCurrentLimit().GetRequestsPerUnit() != 1000 {
				t.Fatalf("replaces: %v", resp)
			}
		}
		if resp := f.call(t, req("test", desc("api", "x"))); resp.GetStatuses()[0].GetLimitRemaining() != 2 {
			t.Fatalf("general was charged while replaced: %v", resp)
		}
		// Shadow mode: over limit is reported in metrics, answered OK.
		for i := 0; i < 3; i++ {
			if resp := f.call(t, req("test", desc("shadow", "s"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("shadow: %v", resp)
			}
		}
		if v := f.metric(t, "rls_rule_hits_total", map[string]string{"rule": "shadow", "result": "shadow_mode"}); v != 2 {
			t.Fatalf("shadow_mode metric = %v", v)
		}
		resp := f.call(t, req("test", desc("internal", "x")))
		if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != math.MaxUint32 {
			t.Fatalf("unlimited: %v", resp)
		}
		resp = f.call(t, req("test", desc("banned", "x")))
		if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("banned: %v", resp)
		}
	})
}

func TestRejectedRequestChargesNoDescriptor(t *testing.T) {
	backends(t, func(t *testing.T, b limiter.Backend) {
		f := newFixture(t, b, func(o *Options) { o.LocalCache = nil })
		f.call(t, req("test", desc("narrow", "n"), desc("wide", "w")))
		for i := 0; i < 10; i++ {
			resp := f.call(t, req("test", desc("narrow", "n"), desc("wide", "w")))
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || resp.GetStatuses()[1].GetCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("%v", resp)
			}
		}
		if resp := f.call(t, req("test", desc("wide", "w"))); resp.GetStatuses()[0].GetLimitRemaining() != 98 {
			t.Fatalf("wide counter inflated by rejected requests: %v", resp)
		}
	})
}

func TestTokenBucketThroughService(t *testing.T) {
	f := newFixture(t, limiter.NewMemory(), nil)
	var ok int
	for i := 0; i < 5; i++ {
		if f.call(t, req("test", desc("bucket", "b"))).GetOverallCode() == rlsv3.RateLimitResponse_OK {
			ok++
		}
	}
	if ok != 2 {
		t.Fatalf("burst 2 admitted %d", ok)
	}
}

func TestFailureModes(t *testing.T) {
	for _, tc := range []struct {
		mode FailureMode
		want rlsv3.RateLimitResponse_Code
	}{{FailAllow, rlsv3.RateLimitResponse_OK}, {FailDeny, rlsv3.RateLimitResponse_OVER_LIMIT}} {
		f := newFixture(t, limiter.NewMemory(), func(o *Options) { o.FailureMode = tc.mode })
		f.backend.fail.Store(true)
		if resp := f.call(t, req("test", desc("user", "f"))); resp.GetOverallCode() != tc.want {
			t.Fatalf("mode %v: %v", tc.mode, resp)
		}
		f.backend.fail.Store(false)
		if resp := f.call(t, req("test", desc("user", "f"))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != 4 {
			t.Fatalf("after recovery: %v", resp)
		}
	}
	if _, err := ParseFailureMode("maybe"); err == nil {
		t.Fatal("bad failure mode accepted")
	}
}

func TestValidation(t *testing.T) {
	f := newFixture(t, limiter.NewMemory(), func(o *Options) {
		o.Limits = Limits{MaxDescriptors: 2, MaxEntries: 2, MaxKeyLen: 8, MaxValueLen: 8}
	})
	neg := desc("a", "b")
	neg.IsNegativeHits = true
	bigHits := desc("a", "b")
	bigHits.HitsAddend = wrapperspb.UInt64(1 << 40)
	badUnit := desc("a", "b")
	badUnit.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{Unit: 99}
	cases := []struct {
		r    *rlsv3.RateLimitRequest
		want string
	}{
		{req("", desc("a", "b")), "domain: must not be empty"},
		{req("test"), "descriptors: must not be empty"},
		{req("test", desc("a", "b"), desc("a", "b"), desc("a", "b")), "descriptors: 3 descriptors, at most 2"},
		{req("test", desc()), "descriptors[0].entries: must not be empty"},
		{req("test", desc("a", "1", "b", "2", "c", "3")), "descriptors[0].entries: 3 entries, at most 2"},
		{req("test", desc("a", "b"), desc("", "b")), "descriptors[1].entries[0].key: must not be empty"},
		{req("test", desc("toolongkey", "b")), "descriptors[0].entries[0].key: longer than 8"},
		{req("test", desc("a", "toolongvalue")), "descriptors[0].entries[0].value: longer than 8"},
		{req("toolongdomain", desc("a", "b")), "domain: longer than 8"},
		{req("test", neg), "is_negative_hits: not supported"},
		{req("test", bigHits), "descriptors[0].hits_addend"},
		{req("test", badUnit), "descriptors[0].limit.unit: unknown unit 99"},
	}
	for _, tc := range cases {
		_, err := f.client.ShouldRateLimit(context.Background(), tc.r)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("request %v: got %v, want InvalidArgument %q", tc.r, err, tc.want)
		}
	}
}

func TestLimitOverride(t *testing.T) {
	f := newFixture(t, limiter.NewMemory(), nil)
	d := desc("any", "thing")
	d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_HOUR}
	if resp := f.call(t, req("nodomain", d)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() != 1 {
		t.Fatalf("%v", resp)
	}
	if resp := f.call(t, req("nodomain", d)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("%v", resp)
	}
}

func FuzzShouldRateLimit(f *testing.F) {
	seed := func(r *rlsv3.RateLimitRequest) {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	seed(req("test", desc("user", "a")))
	seed(req("test", desc("api", "x"), desc("api_key", "vip")))
	seed(req("", desc("a", "b")))
	seed(req("test", desc()))
	d := desc("bucket", "b")
	d.HitsAddend = wrapperspb.UInt64(7)
	d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 3, Unit: 2}
	seed(req("test", d))
	cfg, err := rules.Parse([]rules.File{{Name: "test.yaml", Data: []byte(testRules)}})
	if err != nil {
		f.Fatal(err)
	}
	svc, err := New(Options{Backend: limiter.NewMemory(), LocalCache: limiter.NewOverCache(100)})
	if err != nil {
		f.Fatal(err)
	}
	svc.SetRules(cfg)
	// The newer rule fields, global quota mode and dynamic metadata.
	seed(req("a", desc("q1", "x"), desc("q2", "y"), desc("files", "files/z"), desc("tenant", "t1", "user", "u")))
	seed(req("a", desc("free", "f"), desc("tenant_id", "v"), desc("detail", "d"), desc("path", "/api/1/items")))
	acfg, err := rules.Parse([]rules.File{{Name: "anchor.yaml", Data: []byte(anchorRules)}})
	if err != nil {
		f.Fatal(err)
	}
	asvc, err := New(Options{Backend: limiter.NewMemory(), LocalCache: limiter.NewOverCache(100), QuotaMode: true, DynamicMetadata: true, MaxMetricValues: 10})
	if err != nil {
		f.Fatal(err)
	}
	asvc.SetRules(acfg)
	f.Fuzz(func(t *testing.T, data []byte) {
		var r rlsv3.RateLimitRequest
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		for _, svc := range []*Service{svc, asvc} {
			resp, err := svc.ShouldRateLimit(context.Background(), &r)
			if err != nil {
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("error is not InvalidArgument: %v", err)
				}
				return
			}
			if len(resp.GetStatuses()) != len(r.GetDescriptors()) {
				t.Fatalf("%d statuses for %d descriptors", len(resp.GetStatuses()), len(r.GetDescriptors()))
			}
			if err := resp.ValidateAll(); err != nil {
				t.Fatalf("invalid response: %v", err)
			}
			if _, err := proto.Marshal(resp); err != nil {
				t.Fatalf("response does not marshal: %v", err)
			}
		}
	})
}
