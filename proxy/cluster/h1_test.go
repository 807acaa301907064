package cluster

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestH1TransportReusesAndRecoversFromStaleConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	srv := &http.Server{
		IdleTimeout: 100 * time.Millisecond, // the server drops idle keep-alive conns
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Len", r.Header.Get("Content-Length"))
			io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(b))
		}),
	}
	go srv.Serve(ln)
	defer srv.Close()
	d := &net.Dialer{}
	tr := newH1Transport(d.DialContext, time.Minute)
	do := func(method, body string) string {
		var rb io.Reader
		if body != "" {
			rb = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, "http://"+ln.Addr().String()+"/p?q=1", rb)
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return string(b)
	}
	for i := 0; i < 5; i++ {
		if got := do("GET", ""); got != "GET /p?q=1 " {
			t.Fatalf("got %q", got)
		}
	}
	if conns.Load() != 1 {
		t.Fatalf("%d connections for 5 sequential requests, want 1 (keep-alive)", conns.Load())
	}
	if got := do("POST", "hello"); got != "POST /p?q=1 hello" {
		t.Fatalf("post: %q", got)
	}
	time.Sleep(300 * time.Millisecond) // server closes the idle conn
	if got := do("GET", ""); got != "GET /p?q=1 " {
		t.Fatalf("after idle close: %q", got)
	}
	// A cancelled context unblocks a request waiting for its response.
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	go slow.Serve(ln2)
	defer slow.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln2.Addr().String()+"/", nil)
	start := time.Now()
	if _, err := tr.RoundTrip(req); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("cancel did not abort the request: %v after %s", err, time.Since(start))
	}
}
