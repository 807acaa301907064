package localratelimit

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func percent(n uint32) *corev3.RuntimeFractionalPercent {
	return &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: n}}
}

func conf(max uint32, enabled, enforced uint32) *localv3.LocalRateLimit {
	return &localv3.LocalRateLimit{StatPrefix: "test",
		TokenBucket:    &typev3.TokenBucket{MaxTokens: max, TokensPerFill: wrapperspb.UInt32(2), FillInterval: durationpb.New(time.Second)},
		FilterEnabled:  percent(enabled),
		FilterEnforced: percent(enforced),
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-local-rate-limit", Value: "true"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		RequestHeadersToAddWhenNotEnforced: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-would-limit", Value: "1"}}},
		EnableXRatelimitHeaders:            ratelimitcommonv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
	}
}

func TestBucketFills(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := NewBucket(3, 2, time.Second, c.now)
	for i := range 3 {
		if ok, rem, _ := b.Take(); !ok || rem != uint64(2-i) {
			t.Fatalf("take %d: %v %d", i, ok, rem)
		}
	}
	if ok, _, reset := b.Take(); ok || reset != time.Second {
		t.Fatalf("empty bucket: %v reset %v", ok, reset)
	}
	c.add(999 * time.Millisecond)
	if ok, _, _ := b.Take(); ok {
		t.Fatal("refilled before the interval")
	}
	c.add(time.Millisecond)
	for range 2 {
		if ok, _, _ := b.Take(); !ok {
			t.Fatal("fill of 2 not available")
		}
	}
	if ok, _, _ := b.Take(); ok {
		t.Fatal("more than tokens_per_fill")
	}
	c.add(10 * time.Second) // capped at max
	n := 0
	for {
		if ok, _, _ := b.Take(); !ok {
			break
		}
		n++
	}
	if n != 3 {
		t.Fatalf("after a long pause: %d tokens, want max 3", n)
	}
}

func serve(t *testing.T, f *Filter) (*httptest.Server, *http.Header) {
	var seen http.Header
	var mu sync.Mutex
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
	})
	s := httptest.NewServer(f.Handler(app))
	t.Cleanup(s.Close)
	return s, &seen
}

func get(t *testing.T, url, ct string) *http.Response {
	req, _ := http.NewRequest("GET", url, nil)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	return r
}

func TestEnforced(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	f, err := New(conf(2, 100, 100), c.now)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := serve(t, f)
	for i := range 2 {
		if r := get(t, s.URL, ""); r.StatusCode != 200 || r.Header.Get("X-RateLimit-Remaining") != []string{"1", "0"}[i] {
			t.Fatalf("request %d: %d %v", i, r.StatusCode, r.Header)
		}
	}
	r := get(t, s.URL, "")
	if r.StatusCode != 429 || r.Header.Get("X-Envoy-Ratelimited") != "true" || r.Header.Get("X-Local-Rate-Limit") != "true" {
		t.Fatalf("limited: %d %v", r.StatusCode, r.Header)
	}
	if r := get(t, s.URL, "application/grpc"); r.StatusCode != 200 || r.Header.Get("Grpc-Status") != "14" {
		t.Fatalf("grpc limited: %d %v", r.StatusCode, r.Header)
	}
	c.add(time.Second)
	if r := get(t, s.URL, ""); r.StatusCode != 200 {
		t.Fatalf("after fill: %d", r.StatusCode)
	}
	if st := f.Stats(); st.Enabled != 5 || st.OK != 3 || st.RateLimited != 2 || st.Enforced != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestEnabledNotEnforcedAndDisabled(t *testing.T) {
	f, err := New(conf(1, 100, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, seen := serve(t, f)
	get(t, s.URL, "")
	if r := get(t, s.URL, ""); r.StatusCode != 200 || seen.Get("X-Would-Limit") != "1" {
		t.Fatalf("shadow: %d upstream saw %v", r.StatusCode, *seen)
	}
	if st := f.Stats(); st.RateLimited != 1 || st.Enforced != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Envoy's default is 0% enabled: nothing is counted or limited.
	cfg := conf(1, 0, 100)
	cfg.FilterEnabled = nil
	off, _ := New(cfg, nil)
	s2, _ := serve(t, off)
	for range 3 {
		if r := get(t, s2.URL, ""); r.StatusCode != 200 {
			t.Fatal("disabled filter limited")
		}
	}
	// No token bucket: no filter.
	none, err := New(&localv3.LocalRateLimit{StatPrefix: "x"}, nil)
	if none != nil || err != nil {
		t.Fatalf("no bucket: %v %v", none, err)
	}
	if h := none.Handler(http.NotFoundHandler()); h == nil {
		t.Fatal("nil filter handler")
	}
}

func TestNewRejects(t *testing.T) {
	cfg := conf(1, 100, 100)
	cfg.TokenBucket.FillInterval = durationpb.New(10 * time.Millisecond)
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "fill_interval") {
		t.Fatalf("fast fill: %v", err)
	}
	if _, err := New(&localv3.LocalRateLimit{}, nil); err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Fatalf("no stat prefix: %v", err)
	}
}

func FuzzNew(f *testing.F) {
	b, _ := proto.Marshal(conf(3, 100, 100))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var cfg localv3.LocalRateLimit
		if proto.Unmarshal(b, &cfg) != nil {
			return
		}
		flt, err := New(&cfg, nil)
		if err == nil && flt != nil {
			flt.bucket.Take()
		}
	})
}
