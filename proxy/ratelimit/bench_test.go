package ratelimit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/internal/testbin"
)

// BenchmarkCheckRealRLS measures Filter.Check against one real rls process
// counting in a real Redis, with a limit that is never reached: the cost a
// request pays for the global rate limit, unary (as Envoy calls RLS) and
// on the batch stream. Reports p50/p99 latency of one Check and the client
// side's CPU per Check (this process: filter and gRPC client).
//
//	go test -run '^$' -bench CheckRealRLS -benchtime 20000x ./proxy/ratelimit
func BenchmarkCheckRealRLS(b *testing.B) {
	bin := testbin.Build(b, "./services/rls/cmd/rls")
	redis := redistest.Start(b)
	dir := b.TempDir()
	rules := "domain: sidemesh\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 100000000}\n"
	if err := os.WriteFile(filepath.Join(dir, "sidemesh.yaml"), []byte(rules), 0o644); err != nil {
		b.Fatal(err)
	}
	p, _ := startRLSProcB(b, bin, dir, redis.URL())
	conn, client, err := Dial([]string{p})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	f, err := New(filterConf(time.Second, false), client, Options{})
	if err != nil {
		b.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	bc := NewBatchClient(bctx, conn, BatchOptions{})
	fb, err := New(filterConf(time.Second, false), bc, Options{})
	if err != nil {
		b.Fatal(err)
	}
	route := userRoute(b)
	// The filter's own work (descriptors, decision) without RLS: a
	// descriptor-less request never calls out.
	b.Run("descriptors-only", func(b *testing.B) {
		r := newReq("alice")
		b.ReportAllocs()
		for b.Loop() {
			f.Descriptors(r, route)
		}
	})
	for _, tc := range []struct {
		name string
		par  int
		f    *Filter
	}{{"unary/conc=1", 1, f}, {"unary/conc=64", 64, f}, {"batch/conc=1", 1, fb}, {"batch/conc=64", 64, fb}} {
		par, f := tc.par, tc.f
		b.Run(tc.name, func(b *testing.B) {
			cpu0 := selfCPU()
			var mu sync.Mutex
			var lat []time.Duration
			var i atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := 0; w < par; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					local := make([]time.Duration, 0, b.N/par+1)
					for i.Add(1) <= int64(b.N) {
						r := newReq(fmt.Sprintf("user-%d", w))
						s := time.Now()
						d := f.Check(context.Background(), r, route)
						local = append(local, time.Since(s))
						if d.Outcome != OK {
							b.Errorf("outcome %s", d.Outcome)
							return
						}
					}
					mu.Lock()
					lat = append(lat, local...)
					mu.Unlock()
				}(w)
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64((selfCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "client_cpu_us/op")
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50_us")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99_us")
			}
		})
	}
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProxyCore: the proxy core in-process with and without the
// filter (two listeners, same routes), a real bin/rls + Redis, limit never
// reached, 64 concurrent keep-alive clients. Reports req/s and p50/p99 of
// the whole request through the proxy.
//
//	go test -run '^$' -bench ProxyCore -benchtime 20000x ./proxy/ratelimit
func BenchmarkProxyCore(b *testing.B) {
	bin := testbin.Build(b, "./services/rls/cmd/rls")
	redis := redistest.Start(b)
	dir := b.TempDir()
	rules := "domain: sidemesh\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 100000000}\n"
	if err := os.WriteFile(filepath.Join(dir, "sidemesh.yaml"), []byte(rules), 0o644); err != nil {
		b.Fatal(err)
	}
	rlsAddr, rlsPID := startRLSProcB(b, bin, dir, redis.URL())
	plain, limited := startProxyPair(b, rlsAddr, false)
	_, unary := startProxyPair(b, rlsAddr, true)
	for _, tc := range []struct{ name, url string }{{"filter=off", plain}, {"filter=batch", limited}, {"filter=unary", unary}} {
		b.Run(tc.name, func(b *testing.B) {
			cpu0 := cpuTime(rlsPID)
			lat := loadHTTP(b, tc.url, 64)
			b.ReportMetric(float64((cpuTime(rlsPID)-cpu0).Microseconds())/float64(b.N), "rls_cpu_us/req")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50_us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99_us")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
