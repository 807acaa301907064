package service

import (
	"context"
	"log/slog"
	"strconv"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// BenchmarkShouldRateLimitMemory is the handler's own cost (no gRPC, no
// Redis): one descriptor, a new counter per request.
func BenchmarkShouldRateLimitMemory(b *testing.B) {
	cfg, err := rules.Parse([]rules.File{{Name: "b.yaml", Data: []byte("domain: b\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n")}})
	if err != nil {
		b.Fatal(err)
	}
	svc, err := New(Options{Backend: limiter.NewMemory(), LocalCache: limiter.NewOverCache(1000), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	svc.SetRules(cfg)
	reqs := make([]*rlsv3.RateLimitRequest, 1024)
	for i := range reqs {
		reqs[i] = req("b", desc("user", "u"+strconv.Itoa(i)))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := svc.ShouldRateLimit(context.Background(), reqs[i%len(reqs)]); err != nil {
			b.Fatal(err)
		}
	}
}
