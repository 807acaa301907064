package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	s := New()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sidemesh_test_total", Help: "t"})
	s.Registry().MustRegister(c)
	c.Add(3)
	var fail error = errors.New("redis unreachable")
	s.AddReadyCheck("redis", func(context.Context) error { return fail })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	base := "http://" + ln.Addr().String()

	if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/ready"); code != 503 || !strings.Contains(body, "redis: redis unreachable") {
		t.Fatalf("/ready = %d %q, want 503 naming redis", code, body)
	}
	fail = nil
	if code, _ := get(t, base+"/ready"); code != 200 {
		t.Fatalf("/ready = %d after check passes", code)
	}
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "sidemesh_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics = %d, missing series:\n%s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err == nil {
		t.Fatal("ready after shutdown")
	}
}
