package rlsload

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness/harnesstest"
	"github.com/sidemesh/sidemesh/loadtest/report"
)

// fakeRLS counts per descriptor value in fixed windows and admits up to
// limit+slack per window: slack 0 is a correct service, slack > 0 one that
// over-admits (the counterpart the over-admission check must catch).
type fakeRLS struct {
	rlspb.UnimplementedRateLimitServiceServer
	limit, slack uint64
	unit         time.Duration
	mu           sync.Mutex
	counts       map[string]uint64
	calls        atomic.Int64
}

// ServeHTTP exposes a Redis round-trip counter: one per four calls.
func (f *fakeRLS) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintf(w, "# TYPE fake_redis_roundtrips_total counter\nfake_redis_roundtrips_total %d\nprocess_cpu_seconds_total 1\n", f.calls.Load()/4)
}

func (f *fakeRLS) ShouldRateLimit(_ context.Context, req *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	w := time.Now().UnixNano() / int64(f.unit)
	code := rlspb.RateLimitResponse_OK
	for _, d := range req.Descriptors {
		k := fmt.Sprintf("%s/%d", d.Entries[0].Value, w)
		f.counts[k]++
		if f.counts[k] > f.limit+f.slack {
			code = rlspb.RateLimitResponse_OVER_LIMIT
		}
	}
	return &rlspb.RateLimitResponse{OverallCode: code}, nil
}

func serve(tb testing.TB, svc rlspb.RateLimitServiceServer) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(s, svc)
	go s.Serve(ln)
	tb.Cleanup(s.Stop)
	return ln.Addr().String()
}

func exec(t *testing.T, args ...string) (int, *report.Result, string) {
	t.Helper()
	return harnesstest.Exec(t, Spec(), args...)
}

// clients are the --client kinds every run-level test covers.
var clients = []string{ClientH2, ClientGRPC}

func TestNoopShortRun(t *testing.T) {
	addr := serve(t, Noop{})
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			code, r, stderr := exec(t, "--target", addr, "--client", client, "--concurrency", "8", "--conns", "2", "--requests", "2000", "--duration", "30s", "--keys", "zipf:50", "--descriptors", "2")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if r.Requests != 2000 || r.Outcomes["OK"] != 2000 || r.Errors != 0 || r.Latency.Count != 2000 || r.Latency.P50 <= 0 {
				t.Fatalf("result %+v", r)
			}
			if r.Params["client"] != client {
				t.Fatalf("params %v do not name client %s", r.Params, client)
			}
		})
	}
}

// TestDefaultClient: unary runs use h2 unless told otherwise; --batch runs
// use grpc-go and say so.
func TestDefaultClient(t *testing.T) {
	addr := serve(t, Noop{})
	for _, tc := range []struct {
		args []string
		want string
	}{{nil, ClientH2}, {[]string{"--batch"}, ClientGRPC}} {
		code, r, stderr := exec(t, append([]string{"--target", addr, "--concurrency", "2", "--requests", "50", "--duration", "30s"}, tc.args...)...)
		if code != 0 || r.Params["client"] != tc.want || r.Outcomes["OK"] != 50 {
			t.Fatalf("%v: exit %d (%s), client %q, outcomes %v", tc.args, code, stderr, r.Params["client"], r.Outcomes)
		}
	}
}

// TestErrorsCounted: server errors are errors (with grpc-go's text) for both
// clients.
func TestErrorsCounted(t *testing.T) {
	addr := serve(t, failing{})
	for _, client := range clients {
		code, r, _ := exec(t, "--target", addr, "--client", client, "--concurrency", "2", "--requests", "20", "--duration", "30s")
		if code == 0 || r.Errors != 20 || len(r.ErrorSamples) == 0 || r.ErrorSamples[0] != "rpc error: code = ResourceExhausted desc = no tokens" {
			t.Fatalf("%s: exit %d, %d errors, samples %q", client, code, r.Errors, r.ErrorSamples)
		}
	}
}

type failing struct {
	rlspb.UnimplementedRateLimitServiceServer
}

func (failing) ShouldRateLimit(context.Context, *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	return nil, status.Error(codes.ResourceExhausted, "no tokens")
}

func TestOverAdmissionCaught(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slack uint64
		fail  bool
	}{{"correct", 0, false}, {"over-admits", 3, true}} {
		for _, client := range clients {
			t.Run(tc.name+"/"+client, func(t *testing.T) {
				fake := &fakeRLS{limit: 5, slack: tc.slack, unit: time.Minute, counts: map[string]uint64{}}
				addr := serve(t, fake)
				metrics := httptest.NewServer(fake)
				defer metrics.Close()
				code, r, stderr := exec(t, "--target", addr, "--client", client, "--concurrency", "4", "--requests", "400", "--duration", "30s",
					"--keys", "4", "--expect-limit", "5", "--per", "minute", "--target-metrics", metrics.URL)
				if got := code != 0; got != tc.fail {
					t.Fatalf("exit %d (stderr %s), want failure=%v; checks %+v", code, stderr, tc.fail, r.Checks)
				}
				if len(r.Checks) != 1 || r.Checks[0].OK == tc.fail {
					t.Fatalf("checks %+v", r.Checks)
				}
				if rt := r.Values["redis_roundtrips_per_request"]; rt != 0.25 {
					t.Errorf("round trips per request = %v, want 0.25", rt)
				}
				if tc.fail {
					// 4 keys × 3 extra per window, 1 or 2 windows spanned.
					if over := r.Values["over_admitted_requests"]; over < 4 || over > 24 {
						t.Errorf("over_admitted_requests = %v", over)
					}
					if !strings.Contains(stderr, "no-over-admission") {
						t.Errorf("stderr does not name the failed check: %s", stderr)
					}
				} else if r.Outcomes["OVER_LIMIT"] < 400-4*5*2 {
					t.Errorf("outcomes %v: a correct limiter should reject most", r.Outcomes)
				}
			})
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--keys", "zipf:x"}, {"--keys", "0"}, {"--per", "fortnight"}, {"--conns", "0"},
		{"--descriptors", "0"}, {"--target", "192.0.2.1:81"}, {"--concurrency", "0"}, {"--duration", "0s"},
		{"--target-pid", "5", "--target-metrics", "http://127.0.0.1:1/metrics"},
		{"--client", "http"}, {"--batch", "--client", "h2"},
	} {
		if code, _, stderr := exec(t, args...); code != app.ExitUsage || stderr == "" {
			t.Errorf("%v: exit %d stderr %q, want usage error", args, code, stderr)
		}
	}
}

func TestKeyDists(t *testing.T) {
	p := func(s string) *Picker {
		k, err := ParseKeys(s)
		if err != nil {
			t.Fatal(err)
		}
		return k.NewPicker(1)
	}
	u, h, n, z := p("unique"), p("hot"), p("10"), p("zipf:1000")
	seen := map[uint64]int{}
	zipfTop := 0
	for i := uint64(0); i < 10000; i++ {
		if u.Pick(i) != i || h.Pick(i) != 0 {
			t.Fatal("unique/hot wrong")
		}
		seen[n.Pick(i)]++
		if z.Pick(i) < 10 {
			zipfTop++
		}
	}
	if len(seen) != 10 {
		t.Errorf("uniform over 10 drew %d distinct keys", len(seen))
	}
	for k, c := range seen {
		if k >= 10 || c < 800 || c > 1200 {
			t.Errorf("uniform key %d drawn %d times of 10000", k, c)
		}
	}
	// Zipf s=1.1 over 1000: the top 1% of keys carry well over a third.
	if zipfTop < 3500 {
		t.Errorf("zipf top-10 share %d/10000", zipfTop)
	}
}

func FuzzParseKeys(f *testing.F) {
	for _, s := range []string{"unique", "hot", "zipf:10", "zipf:1", "7", "zipf:", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKeys(s)
		if err == nil {
			k.NewPicker(1).Pick(3)
		}
	})
}

func TestRoundTripMetric(t *testing.T) {
	s := map[string]float64{"rls_redis_roundtrips_total": 3, "go_goroutines": 1}
	if RoundTripMetric(s, "auto") != "rls_redis_roundtrips_total" || RoundTripMetric(s, "go_goroutines") != "go_goroutines" || RoundTripMetric(s, "missing") != "" {
		t.Fatal("round-trip metric selection wrong")
	}
}
