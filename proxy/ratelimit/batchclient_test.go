package ratelimit

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rlcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/internal/testbin"
	batchv1 "github.com/sidemesh/sidemesh/proto/ratelimitbatch/v1"
)

func userReq(user string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: "sidemesh", HitsAddend: 1, Descriptors: []*rlcommonv3.RateLimitDescriptor{
		{Entries: []*rlcommonv3.RateLimitDescriptor_Entry{{Key: "user", Value: user}}}}}
}

// newBatchClient dials addrs and runs a two-stream batch client with its
// metrics until the test ends.
func newBatchClient(t *testing.T, addrs ...string) (context.Context, *BatchClient, *BatchMetrics) {
	t.Helper()
	conn, _, err := Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	bm, err := NewBatchMetrics(prometheus.NewRegistry(), "rls")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, NewBatchClient(ctx, conn, BatchOptions{Streams: 2, Metrics: bm}), bm
}

// TestBatchClientExactAcrossReplicas: 64 concurrent callers share two
// batch streams to two real rls processes on one Redis. A limit of 50 per
// minute admits exactly 50 of 400 calls, the calls really travel batched,
// invalid requests get the unary RPC's INVALID_ARGUMENT, and killing one
// replica gracefully under load (SIGTERM) fails not one call, and with
// both gone the filter's failure mode decides.
func TestBatchClientExactAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the rls binary")
	}
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	redis := redistest.Start(t)
	dir := t.TempDir()
	rules := "domain: sidemesh\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 50}\n"
	if err := os.WriteFile(filepath.Join(dir, "sidemesh.yaml"), []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	r1 := startRLSProc(t, bin, dir, redis.URL())
	r2 := startRLSProc(t, bin, dir, redis.URL())
	ctx, bc, bm := newBatchClient(t, r1.grpc, r2.grpc)
	waitUntil(t, "a batch stream", bc.Streaming)
	waitUntil(t, "both streams counted", func() bool { return value(bm.Streams) == 2 })

	// burst sends n calls for user over 64 goroutines; it returns how many
	// were OK, OVER_LIMIT, and failed.
	burst := func(user string, n int) (ok, over, failed int) {
		var o, v, f atomic.Int64
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(n) {
					cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					resp, err := bc.ShouldRateLimit(cctx, userReq(user))
					cancel()
					switch {
					case err != nil:
						f.Add(1)
					case resp.GetOverallCode() == rlsv3.RateLimitResponse_OK:
						o.Add(1)
					default:
						v.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		return int(o.Load()), int(v.Load()), int(f.Load())
	}
	calls0, batches0 := bc.BatchStats()
	user := fmt.Sprintf("u%d", time.Now().UnixNano())
	ok, over, failed := burst(user, 400)
	if ok != 50 || failed != 0 {
		// A minute boundary inside the burst starts a new window; once more.
		user += "b"
		ok, over, failed = burst(user, 400)
	}
	if ok != 50 || over != 350 || failed != 0 {
		t.Fatalf("ok %d over %d failed %d, want exactly 50 / 350 / 0", ok, over, failed)
	}
	calls, batches := bc.BatchStats()
	calls, batches = calls-calls0, batches-batches0
	if calls < 400 || batches >= calls {
		t.Fatalf("%d calls went in %d stream messages: want every call streamed, several per message", calls, batches)
	}
	t.Logf("%d calls in %d messages (%.1f per message)", calls, batches, float64(calls)/float64(batches))
	all, msgs := bc.BatchStats()
	if got := value(bm.Batched); got != float64(all) {
		t.Fatalf("sidemesh_proxy_rls_batched_calls_total %v, want %d", got, all)
	}
	if got := value(bm.Messages); got != float64(msgs) {
		t.Fatalf("sidemesh_proxy_rls_batch_messages_total %v, want %d", got, msgs)
	}

	// A bad request is answered per call, as the unary RPC answers it.
	_, err := bc.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "sidemesh"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty descriptors: %v, want InvalidArgument", err)
	}

	// One replica is stopped (SIGTERM) under load, as in a rolling update:
	// it drains its batch streams, the client replays what they had not
	// read on the other replica, and not one call fails.
	stop := make(chan struct{})
	var afterStop, failures atomic.Int64
	var stopped atomic.Bool
	var loadWG sync.WaitGroup
	for w := range 16 {
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := bc.ShouldRateLimit(cctx, userReq(fmt.Sprintf("k%d-%d", w, i)))
				cancel()
				if err != nil {
					failures.Add(1)
					t.Errorf("call failed across a graceful replica stop: %v", err)
					return
				}
				if stopped.Load() {
					afterStop.Add(1)
				}
			}
		}()
	}
	waitUntil(t, "load running", func() bool { c, _ := bc.BatchStats(); return c > calls+calls0+500 })
	if err := r1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-r1.exited
	stopped.Store(true)
	waitUntil(t, "calls answered after one replica stopped", func() bool { return afterStop.Load() > 200 || failures.Load() > 0 })
	close(stop)
	loadWG.Wait()
	if !bc.Streaming() {
		t.Fatal("no batch stream after one replica stopped; the other is up")
	}
	if code := r1.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("rls stopped with exit code %d, want 0 (drained)", code)
	}

	// Every replica gone: the filter's failure mode decides, on the batch
	// client as on unary (deny → 500, allow → passes).
	_ = r2.cmd.Process.Kill()
	<-r2.exited
	deny, err := New(filterConf(300*time.Millisecond, true), bc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	allow, err := New(filterConf(300*time.Millisecond, false), bc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := deny.Check(ctx, newReq("gone"), userRoute(t)); d.Outcome != Error || !d.Deny || d.Status != 500 {
		t.Fatalf("no RLS, failure_mode_deny: %+v, want denied with 500", d)
	}
	if d := allow.Check(ctx, newReq("gone"), userRoute(t)); d.Outcome != FailureModeAllowed || d.Deny {
		t.Fatalf("no RLS, failure mode allow: %+v, want allowed", d)
	}
}

// TestBatchClientFallsBackToUnary: against an RLS without the batch
// extension (here an in-test unary-only RateLimitService standing in for
// envoyproxy/ratelimit, which cannot run on this machine) every call is
// answered, none lost to the probe, and the client settles on unary.
func TestBatchClientFallsBackToUnary(t *testing.T) {
	fake, addr, _ := startFakeRLS(t, 1000)
	ctx, bc, bm := newBatchClient(t, addr)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				resp, err := bc.ShouldRateLimit(cctx, userReq(fmt.Sprintf("w%d-%d", w, i)))
				cancel()
				if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					failed.Add(1)
					t.Errorf("call: %v %v", resp.GetOverallCode(), err)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 || fake.calls() != 320 {
		t.Fatalf("%d failed, the server saw %d calls; want 0 and 320", failed.Load(), fake.calls())
	}
	waitUntil(t, "unary fallback", func() bool { return !bc.Streaming() && bc.unaryUntil.Load() > 0 })
	// Every call ended as a unary RPC: directly, or replayed from a probe.
	if got := value(bm.Unary); got != 320 {
		t.Fatalf("sidemesh_proxy_rls_unary_calls_total %v, want 320", got)
	}
}

// value reads one counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestBatchClientTimeout: a call bounded by the filter's timeout ends with
// DEADLINE_EXCEEDED when RLS is slow (here the unary path of the client,
// against the in-test unary-only server with a delay).
func TestBatchClientTimeout(t *testing.T) {
	fake, addr, _ := startFakeRLS(t, 1000)
	fake.delay.Store(int64(2 * time.Second))
	conn, _, err := Dial([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bc := NewBatchClient(ctx, conn, BatchOptions{})
	f, err := New(filterConf(50*time.Millisecond, true), bc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d := f.Check(ctx, newReq("slow"), userRoute(t))
	if d.Outcome != Error || !d.Deny || d.Status != 500 {
		t.Fatalf("decision %+v, want error denied with 500 (failure_mode_deny)", d)
	}
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Fatalf("Check took %v with a 50ms timeout", el)
	}
}

// gatedBatchServer is an in-test RateLimitBatch server that hands every
// message it receives to the test and answers it (all calls OK) only when
// the test says so.
type gatedBatchServer struct {
	batchv1.UnimplementedRateLimitBatchServer
	got chan received
}

// received is one message and how to answer it on its stream.
type received struct {
	*batchv1.Batch
	answer chan<- *batchv1.Batch
}

func (g *gatedBatchServer) Check(st grpc.BidiStreamingServer[batchv1.Batch, batchv1.Answers]) error {
	errc := make(chan error, 1)
	answer := make(chan *batchv1.Batch, 16)
	go func() {
		for {
			b, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			g.got <- received{b, answer}
		}
	}()
	ok, err := proto.Marshal(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK})
	if err != nil {
		return err
	}
	for {
		select {
		case err := <-errc:
			return err
		case b := <-answer:
			a := &batchv1.Answers{}
			for _, c := range b.GetCalls() {
				a.Answers = append(a.Answers, &batchv1.Answer{Id: c.GetId(), Response: ok})
			}
			if err := st.Send(a); err != nil {
				return err
			}
		}
	}
}

func startGatedBatchServer(t *testing.T) (*gatedBatchServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedBatchServer{got: make(chan received, 16)}
	s := grpc.NewServer()
	batchv1.RegisterRateLimitBatchServer(s, g)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return g, ln.Addr().String()
}

// received waits for the server's next message.
func (g *gatedBatchServer) received(t *testing.T) received {
	t.Helper()
	select {
	case b := <-g.got:
		return b
	case <-time.After(30 * time.Second):
		t.Fatal("timed out waiting for a batch message")
		return received{}
	}
}

// TestBatchClientWindow: with one message in flight (on either of two
// streams), calls wait and leave together as the next message once the
// first is answered, and a lone call goes at once; a message left
// unanswered holds them back at most Hold.
func TestBatchClientWindow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		streams int
		hold    time.Duration
		answer  bool // answer the first message before the rest may go
	}{
		{"one stream/answer releases", 1, time.Hour, true},
		{"two streams/answer releases", 2, time.Hour, true},
		{"two streams/hold releases", 2, 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, addr := startGatedBatchServer(t)
			conn, _, err := Dial([]string{addr})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			bc := NewBatchClient(ctx, conn, BatchOptions{Streams: tc.streams, Window: 1, Hold: tc.hold})
			waitUntil(t, "the batch stream", bc.Streaming)

			call := func(errs chan<- error, user string) {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				resp, err := bc.ShouldRateLimit(cctx, userReq(user))
				if err == nil && resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					err = fmt.Errorf("answer %v", resp.GetOverallCode())
				}
				errs <- err
			}
			errs := make(chan error, 6)
			go call(errs, "lone")
			first := g.received(t)
			if n := len(first.GetCalls()); n != 1 {
				t.Fatalf("a lone call went in a message of %d calls", n)
			}
			for i := range 5 {
				go call(errs, fmt.Sprintf("u%d", i))
			}
			if tc.answer {
				// The window is full: all five wait in the queue, none sent.
				waitUntil(t, "five calls held back", func() bool { return len(bc.queue) == 5 })
				select {
				case b := <-g.got:
					t.Fatalf("a message of %d calls left with one in flight", len(b.GetCalls()))
				default:
				}
				first.answer <- first.Batch
			}
			second := g.received(t)
			if n := len(second.GetCalls()); tc.answer && n != 5 {
				t.Fatalf("second message carries %d calls, want the 5 held back", n)
			}
			if !tc.answer {
				first.answer <- first.Batch
			}
			second.answer <- second.Batch
			for got := 1 + len(second.GetCalls()); got < 6; {
				b := g.received(t)
				b.answer <- b.Batch
				got += len(b.GetCalls())
			}
			for range 6 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
