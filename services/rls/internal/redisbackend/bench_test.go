package redisbackend

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// redisCPU is redis-server's own CPU time so far (INFO cpu).
func redisCPU(b *testing.B, client redis.UniversalClient) time.Duration {
	info, err := client.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// BenchmarkCheckRedisCPU: 64 concurrent one-descriptor requests through the
// backend (batched pipelines, one script per batch) against a real Redis.
// Reports Redis's own CPU per request and requests per round trip, the
// steady numbers on a noisy box.
//
//	go test -run '^$' -bench CheckRedisCPU -benchtime 50000x ./services/rls/internal/redisbackend
func BenchmarkCheckRedisCPU(b *testing.B) {
	srv := redistest.Start(b)
	for _, keys := range []string{"hot", "unique"} {
		b.Run("keys="+keys, func(b *testing.B) {
			client, cluster, err := NewClient(ClientConfig{URL: srv.URL(), PoolSize: 8, Timeout: 2 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			reg := prometheus.NewRegistry()
			r, err := New(Options{Client: client, Cluster: cluster, Timeout: 2 * time.Second, Registerer: reg,
				BatchSize: 256, Pipelines: 1, BreakerFailures: 3, BreakerCooldown: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			run := strconv.FormatInt(time.Now().UnixNano(), 36)
			var next atomic.Int64
			var wg sync.WaitGroup
			cpu0 := redisCPU(b, client)
			b.ResetTimer()
			for w := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					items := make([]limiter.Item, 1)
					res := make([]limiter.Result, 1)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						k := "hot" + strconv.Itoa(w)
						if keys == "unique" {
							k = run + strconv.FormatInt(i, 10)
						}
						items[0] = limiter.Item{Key: limiter.Key("bench:", rules.FixedWindow, time.Minute, "d", "user", k),
							Algorithm: rules.FixedWindow, Unit: time.Minute, Limit: 1 << 30, Hits: 1, Enforce: limiter.Enforced}
						if err := r.Check(context.Background(), time.Now(), items, res); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			cpu := redisCPU(b, client) - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "redis_cpu_us/req")
			b.ReportMetric(float64(b.N)/counterValue(b, reg, "rls_redis_round_trips_total"), "req/roundtrip")
		})
	}
}

func counterValue(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var v float64
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
			return v
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}
