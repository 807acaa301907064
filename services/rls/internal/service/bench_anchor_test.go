package service

import (
	"context"
	"log/slog"
	"strconv"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// BenchmarkAnchorFeatures is the handler's cost (memory backend, no gRPC)
// with the newer envoyproxy/ratelimit rule fields, next to a plain bare key
// (the same case as BenchmarkShouldRateLimitMemory).
func BenchmarkAnchorFeatures(b *testing.B) {
	const src = `
domain: b
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: files
    value: files/*/v*
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: tenant
    value_to_metric: true
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: model
    value: m1*
    quota_mode: true
    metadata: {backend: {name: one}}
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: model
    value: m2*
    quota_mode: true
    metadata: {backend: {name: two}}
    rate_limit: {unit: second, requests_per_unit: 1000000}
`
	cfg, err := rules.Parse([]rules.File{{Name: "b.yaml", Data: []byte(src)}})
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name     string
		metadata bool
		mk       func(i int) []*rlcommon.RateLimitDescriptor
	}{
		{"bare_key", false, func(i int) []*rlcommon.RateLimitDescriptor {
			return []*rlcommon.RateLimitDescriptor{desc("user", "u"+strconv.Itoa(i))}
		}},
		{"share_threshold_middle_wildcard", false, func(i int) []*rlcommon.RateLimitDescriptor {
			return []*rlcommon.RateLimitDescriptor{desc("files", "files/"+strconv.Itoa(i)+"/v2")}
		}},
		{"value_to_metric_100_values", false, func(i int) []*rlcommon.RateLimitDescriptor {
			return []*rlcommon.RateLimitDescriptor{desc("tenant", "t"+strconv.Itoa(i%100))}
		}},
		{"quota_2_descriptors", false, func(i int) []*rlcommon.RateLimitDescriptor {
			return []*rlcommon.RateLimitDescriptor{desc("model", "m1-"+strconv.Itoa(i)), desc("model", "m2-"+strconv.Itoa(i))}
		}},
		{"quota_2_descriptors_dynamic_metadata", true, func(i int) []*rlcommon.RateLimitDescriptor {
			return []*rlcommon.RateLimitDescriptor{desc("model", "m1-"+strconv.Itoa(i)), desc("model", "m2-"+strconv.Itoa(i))}
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			svc, err := New(Options{Backend: limiter.NewMemory(), LocalCache: limiter.NewOverCache(1000), Log: slog.New(slog.DiscardHandler), DynamicMetadata: tc.metadata})
			if err != nil {
				b.Fatal(err)
			}
			svc.SetRules(cfg)
			reqs := make([]*rlsv3.RateLimitRequest, 1024)
			for i := range reqs {
				reqs[i] = req("b", tc.mk(i)...)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := svc.ShouldRateLimit(context.Background(), reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
