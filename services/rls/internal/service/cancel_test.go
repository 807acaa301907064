package service

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/redisbackend"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// TestCallerGivingUpIsNoBackendFailure: a caller whose context ends while
// its request waits for Redis (here Redis is stopped with SIGSTOP, so the
// pipeline hangs) gets its context's status, counted as "canceled" — not
// an answer by failure mode and not a backend failure in the metrics.
func TestCallerGivingUpIsNoBackendFailure(t *testing.T) {
	srv := redistest.Start(t)
	client, cluster, err := redisbackend.NewClient(redisbackend.ClientConfig{URL: srv.URL(), PoolSize: 4, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	reg := prometheus.NewRegistry()
	rb, err := redisbackend.New(redisbackend.Options{Client: client, Cluster: cluster, Timeout: 5 * time.Second,
		Registerer: prometheus.NewRegistry(), BreakerFailures: 3, BreakerCooldown: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	svc, err := New(Options{Backend: rb, Registerer: reg, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.Parse([]rules.File{{Name: "r.yaml", Data: []byte(testRules)}})
	if err != nil {
		t.Fatal(err)
	}
	svc.SetRules(cfg)
	// A first call loads the script while Redis answers.
	if _, err := svc.ShouldRateLimit(context.Background(), req("test", desc("user", "warm"))); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	defer srv.Resume()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = svc.ShouldRateLimit(ctx, req("test", desc("user", "late")))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err %v, want DeadlineExceeded", err)
	}
	if v := counter(t, reg, "rls_requests_total", "canceled"); v != 1 {
		t.Fatalf("rls_requests_total{code=canceled} %v, want 1", v)
	}
	if v := counter(t, reg, "rls_backend_failures_total", ""); v != 0 {
		t.Fatalf("rls_backend_failures_total %v, want 0", v)
	}
}

// counter sums a counter family's series whose first label value is label
// (all series when label is empty).
func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || labelIs(m, label) {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

func labelIs(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}
