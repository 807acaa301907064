package httpload

import (
	"net"
	"net/http"
	"testing"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/harness/harnesstest"
	"github.com/sidemesh/sidemesh/loadtest/report"
)

func start(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(h)
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return "http://" + ln.Addr().String() + "/"
}

func exec(t *testing.T, args ...string) (int, *report.Result, string) {
	t.Helper()
	return harnesstest.Exec(t, Spec(), args...)
}

func TestHTTP1ClosedLoop(t *testing.T) {
	u := &Upstream{}
	url := start(t, u)
	code, r, stderr := exec(t, "--url", url, "--concurrency", "8", "--requests", "1000", "--duration", "30s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if r.Outcomes["200"] != 1000 || u.Requests[1].Load() != 1000 || u.Requests[2].Load() != 0 {
		t.Fatalf("outcomes %v, upstream h1=%d h2=%d", r.Outcomes, u.Requests[1].Load(), u.Requests[2].Load())
	}
}

func TestH2COpenLoop(t *testing.T) {
	u := &Upstream{}
	url := start(t, u)
	code, r, stderr := exec(t, "--url", url, "--h2c", "--conns", "2", "--concurrency", "8", "--rate", "400", "--duration", "1s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if r.Requests != 400 || r.Outcomes["200"] != 400 || u.Requests[2].Load() != 400 {
		t.Fatalf("requests %d outcomes %v upstream h2=%d, want 400 over h2c", r.Requests, r.Outcomes, u.Requests[2].Load())
	}
	if r.Mode != "open 400/s" {
		t.Fatalf("mode %q", r.Mode)
	}
}

func TestStatusHistogramAndHeaders(t *testing.T) {
	var n int
	url := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-User") != "alice" || r.Host != "api.local" {
			w.WriteHeader(400)
			return
		}
		n++ // concurrency 1: no race
		if n%4 == 0 {
			w.WriteHeader(429)
		}
	}))
	code, r, stderr := exec(t, "--url", url, "--concurrency", "1", "--requests", "100", "--header", "x-user: alice", "--host", "api.local")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if r.Outcomes["200"] != 75 || r.Outcomes["429"] != 25 || r.Values["non_2xx"] != 25 {
		t.Fatalf("outcomes %v values %v", r.Outcomes, r.Values)
	}
}

func TestTransportErrorsFail(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every request is a connection error
	code, r, _ := exec(t, "--url", "http://"+addr+"/", "--concurrency", "2", "--requests", "20")
	if code == 0 || r.Errors != 20 || !r.Failed() {
		t.Fatalf("exit %d errors %d checks %+v", code, r.Errors, r.Checks)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--url", "https://127.0.0.1/"}, {"--url", "::"}, {"--url", "http://192.0.2.7:80/"},
		{"--header", "nocolon"}, {"--header", "bad name: v"}, {"--conns", "-1"}, {"--body-size", "-3"},
	} {
		if code, _, stderr := exec(t, args...); code != app.ExitUsage || stderr == "" {
			t.Errorf("%v: exit %d stderr %q, want usage error", args, code, stderr)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add("x-user: alice")
	f.Add(":")
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := ParseHeader(s)
		if err == nil && (k == "" || http.CanonicalHeaderKey(k) != k || len(v) > len(s)) {
			t.Fatalf("%q → %q %q", s, k, v)
		}
	})
}
