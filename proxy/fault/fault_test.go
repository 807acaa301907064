package fault

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func abort(status uint32, num uint32) *faultv3.FaultAbort {
	return &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: status}, Percentage: &typev3.FractionalPercent{Numerator: num}}
}

func mustNew(t *testing.T, cfg *faultv3.HTTPFault) *Filter {
	t.Helper()
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func serve(t *testing.T, f *Filter, cluster string) *httptest.Server {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	s := httptest.NewServer(f.Handler(app, func(*http.Request) string { return cluster }))
	t.Cleanup(s.Close)
	return s
}

func do(t *testing.T, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestAbortAndPercentages(t *testing.T) {
	always := serve(t, mustNew(t, &faultv3.HTTPFault{Abort: abort(503, 100)}), "api")
	if r, body := do(t, always.URL, nil); r.StatusCode != 503 || body != "fault filter abort" {
		t.Fatalf("100%% abort: %d %q", r.StatusCode, body)
	}
	never := serve(t, mustNew(t, &faultv3.HTTPFault{Abort: abort(503, 0)}), "api")
	if r, body := do(t, never.URL, nil); r.StatusCode != 200 || body != "app" {
		t.Fatalf("0%% abort: %d", r.StatusCode)
	}
	half := mustNew(t, &faultv3.HTTPFault{Abort: abort(503, 50)})
	n := 0
	for range 4000 {
		r := httptest.NewRequest("GET", "/", nil)
		p := half.Decide(r, "api")
		if p.AbortHTTP == 503 {
			n++
		}
		p.Done()
	}
	if n < 1700 || n > 2300 { // 50% ± ~6 sigma
		t.Fatalf("50%% abort hit %d of 4000", n)
	}
	if s := half.Stats(); s.AbortsInjected != uint64(n) || s.Active != 0 {
		t.Fatalf("stats %+v (n=%d)", s, n)
	}
}

func TestDelayAndGRPCAbort(t *testing.T) {
	f := mustNew(t, &faultv3.HTTPFault{
		Delay: &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(150 * time.Millisecond)}, Percentage: &typev3.FractionalPercent{Numerator: 100}},
		Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 14}, Percentage: &typev3.FractionalPercent{Numerator: 100}},
	})
	s := serve(t, f, "api")
	start := time.Now()
	r, _ := do(t, s.URL, map[string]string{"Content-Type": "application/grpc"})
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("delay not applied: %v", el)
	}
	if r.StatusCode != 200 || r.Header.Get("Grpc-Status") != "14" {
		t.Fatalf("grpc abort: %d %v", r.StatusCode, r.Header)
	}
	if st := f.Stats(); st.DelaysInjected != 1 || st.AbortsInjected != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHeaderControlledFaults(t *testing.T) {
	f := mustNew(t, &faultv3.HTTPFault{
		Delay: &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_HeaderDelay_{HeaderDelay: &faultcommonv3.FaultDelay_HeaderDelay{}}, Percentage: &typev3.FractionalPercent{Numerator: 100}},
		Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HeaderAbort_{HeaderAbort: &faultv3.FaultAbort_HeaderAbort{}}, Percentage: &typev3.FractionalPercent{Numerator: 100}},
	})
	s := serve(t, f, "api")
	if r, _ := do(t, s.URL, nil); r.StatusCode != 200 {
		t.Fatalf("no headers: %d", r.StatusCode)
	}
	if r, _ := do(t, s.URL, map[string]string{HeaderAbort: "418"}); r.StatusCode != 418 {
		t.Fatalf("abort header: %d", r.StatusCode)
	}
	if r, _ := do(t, s.URL, map[string]string{HeaderAbort: "418", HeaderAbortPercentage: "0"}); r.StatusCode != 200 {
		t.Fatalf("percentage header 0 should disable: %d", r.StatusCode)
	}
	start := time.Now()
	if r, _ := do(t, s.URL, map[string]string{HeaderDelay: "120"}); r.StatusCode != 200 || time.Since(start) < 120*time.Millisecond {
		t.Fatalf("delay header: %d after %v", r.StatusCode, time.Since(start))
	}
	if r, _ := do(t, s.URL, map[string]string{HeaderAbortGRPC: "8", "Content-Type": "application/grpc"}); r.Header.Get("Grpc-Status") != "8" {
		t.Fatalf("grpc abort header: %v", r.Header)
	}
}

func TestScopingAndMaxActiveFaults(t *testing.T) {
	cfg := &faultv3.HTTPFault{Abort: abort(500, 100), UpstreamCluster: "api",
		Headers:         []*routev3.HeaderMatcher{{Name: "x-chaos", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}},
		DownstreamNodes: []string{"web-sidecar"},
		MaxActiveFaults: wrapperspb.UInt32(1)}
	f := mustNew(t, cfg)
	req := func(chaos bool, node string) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		if chaos {
			r.Header.Set("x-chaos", "1")
		}
		r.Header.Set("x-envoy-downstream-service-node", node)
		return r
	}
	if p := f.Decide(req(true, "web-sidecar"), "web"); p.Faulty() {
		t.Fatal("other cluster faulted")
	}
	if p := f.Decide(req(false, "web-sidecar"), "api"); p.Faulty() {
		t.Fatal("non-matching headers faulted")
	}
	if p := f.Decide(req(true, "ingress"), "api"); p.Faulty() {
		t.Fatal("other downstream node faulted")
	}
	p1 := f.Decide(req(true, "web-sidecar"), "api")
	if p1.AbortHTTP != 500 {
		t.Fatal("matching request not faulted")
	}
	if p2 := f.Decide(req(true, "web-sidecar"), "api"); p2.Faulty() {
		t.Fatal("max_active_faults 1 exceeded")
	}
	p1.Done()
	p3 := f.Decide(req(true, "web-sidecar"), "api")
	if !p3.Faulty() {
		t.Fatal("slot not released")
	}
	p3.Done()
	if st := f.Stats(); st.FaultsOverflow != 1 || st.AbortsInjected != 2 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNewRejects(t *testing.T) {
	_, err := New(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 99}}})
	if err == nil || !strings.Contains(err.Error(), "HttpStatus") {
		t.Fatalf("bad status: %v", err)
	}
	_, err = New(&faultv3.HTTPFault{ResponseRateLimit: &faultcommonv3.FaultRateLimit{}})
	if err == nil {
		t.Fatal("response_rate_limit accepted")
	}
}

func FuzzNew(f *testing.F) {
	b, _ := proto.Marshal(&faultv3.HTTPFault{Abort: abort(503, 10)})
	f.Add(b, "418", "5")
	f.Fuzz(func(t *testing.T, b []byte, h1, h2 string) {
		var cfg faultv3.HTTPFault
		if proto.Unmarshal(b, &cfg) != nil {
			return
		}
		flt, err := New(&cfg)
		if err != nil {
			return
		}
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set(HeaderAbort, h1)
		r.Header.Set(HeaderDelayPercentage, h2)
		p := flt.Decide(r, "c")
		p.Done()
	})
}
