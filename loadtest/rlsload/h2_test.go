package rlsload

import (
	"context"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestAppendRequest: the hand-written request is the message Op builds for
// grpc-go, byte for byte and after proto.Unmarshal.
func TestAppendRequest(t *testing.T) {
	for _, opt := range []Options{
		{Domain: "bench", Key: "user", Descriptors: 1, RunID: "lt1x"},
		{Domain: "sidemesh", Key: "k", Descriptors: 5, RunID: strings.Repeat("r", 200)}, // values > 127 bytes: 2-byte lengths
	} {
		l := &Load{opt: opt}
		for _, k := range []uint64{0, 7, 1 << 40} {
			want := &rlspb.RateLimitRequest{Domain: opt.Domain, HitsAddend: 1}
			for d := range opt.Descriptors {
				want.Descriptors = append(want.Descriptors, &rlcommon.RateLimitDescriptor{
					Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: opt.Key, Value: l.value(k, d)}},
				})
			}
			b := l.appendRequest([]byte("junk")[:0], k)
			got := &rlspb.RateLimitRequest{}
			if err := proto.Unmarshal(b, got); err != nil || !proto.Equal(got, want) {
				t.Fatalf("decoded %v (%v), want %v", got, err, want)
			}
			if m, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(want); string(m) != string(b) {
				t.Fatalf("bytes differ from proto.Marshal:\n%x\n%x", b, m)
			}
		}
	}
}

// TestOverallCode: the one-field decoder agrees with proto.Unmarshal,
// whatever else the answer carries.
func TestOverallCode(t *testing.T) {
	for _, r := range []*rlspb.RateLimitResponse{
		{},
		{OverallCode: rlspb.RateLimitResponse_OK},
		{OverallCode: rlspb.RateLimitResponse_OVER_LIMIT, Statuses: []*rlspb.RateLimitResponse_DescriptorStatus{
			{Code: rlspb.RateLimitResponse_OK, LimitRemaining: 3, DurationUntilReset: durationpb.New(time.Second)},
		}, ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "x-ratelimit-limit", Value: "5"}}, RawBody: []byte("slow")},
		{Statuses: []*rlspb.RateLimitResponse_DescriptorStatus{{Code: rlspb.RateLimitResponse_OVER_LIMIT}}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b = protowire.AppendTag(b, 999, protowire.Fixed64Type) // an unknown field
		b = protowire.AppendFixed64(b, 1)
		want := &rlspb.RateLimitResponse{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatal(err)
		}
		if got, err := overallCode(b); err != nil || got != want.OverallCode {
			t.Fatalf("overallCode = %v (%v), proto.Unmarshal says %v", got, err, want.OverallCode)
		}
	}
	// The last occurrence wins, as in proto.
	b := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)
	b = protowire.AppendVarint(protowire.AppendTag(b, 1, protowire.VarintType), 2)
	if got, _ := overallCode(b); got != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("repeated field: %v", got)
	}
	for _, bad := range [][]byte{{0x08}, {0x0a, 0x05, 1}, {0xff}} {
		if _, err := overallCode(bad); err == nil {
			t.Errorf("%x: no error", bad)
		}
	}
}

// TestH2Redial: when the server goes away (GOAWAY) and comes back on the
// same address, the h2 client reconnects, as grpc-go does.
func TestH2Redial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s1 := NewNoopServer()
	go s1.Serve(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	slots, err := DialH2(ctx, addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer CloseH2(slots)
	l := NewH2(Options{Domain: "d", Key: "k", Descriptors: 1, RunID: "r", Timeout: 5 * time.Second, Keys: KeyDist{kind: "unique"}}, slots, 1)
	if out, err := l.Op(ctx, 0, 1); err != nil || out != "OK" {
		t.Fatalf("%q %v", out, err)
	}
	s1.GracefulStop()
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	s2 := NewNoopServer()
	go s2.Serve(ln2)
	defer s2.Stop()
	for seq := uint64(2); ; seq++ {
		out, err := l.Op(ctx, 0, seq)
		if err == nil && out == "OK" {
			break
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("after restart: %q %v", out, err)
		}
		// Redials are at most every 100 ms: wait for the next chance.
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// BenchmarkClients compares one ShouldRateLimit through each client against
// the in-process no-op server: ns/op and allocs/op, and cpu-ns/op (the
// process's CPU per call, server included; the server's share is the same
// for both, so the difference is the client's).
func BenchmarkClients(b *testing.B) {
	addr := serve(b, Noop{})
	opt := Options{Domain: "bench", Key: "user", Descriptors: 1, RunID: "b", Timeout: 5 * time.Second, Keys: KeyDist{kind: "unique"}}
	ctx := context.Background()
	for _, client := range clients {
		for _, par := range []int{1, 64} {
			b.Run(client+"/callers="+map[int]string{1: "1", 64: "64"}[par], func(b *testing.B) {
				var l *Load
				const workers = 64 * 64 // RunParallel runs GOMAXPROCS×64 goroutines at most
				if client == ClientH2 {
					slots, err := DialH2(ctx, addr, 4)
					if err != nil {
						b.Fatal(err)
					}
					defer CloseH2(slots)
					l = NewH2(opt, slots, workers)
				} else {
					conns, err := Dial(ctx, addr, 4)
					if err != nil {
						b.Fatal(err)
					}
					defer func() {
						for _, c := range conns {
							c.Close()
						}
					}()
					l = New(ctx, opt, conns, workers)
				}
				var next = make(chan int, workers)
				for i := range workers {
					next <- i
				}
				cpu0 := cpuNanos()
				b.ReportAllocs()
				b.ResetTimer()
				if par == 1 {
					for i := 0; i < b.N; i++ {
						if _, err := l.Op(ctx, 0, uint64(i)); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					b.SetParallelism(64 / max(1, runtimeProcs()))
					b.RunParallel(func(pb *testing.PB) {
						w := <-next
						for seq := uint64(0); pb.Next(); seq++ {
							if _, err := l.Op(ctx, w, seq); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.StopTimer()
				b.ReportMetric(float64(cpuNanos()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

func cpuNanos() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
