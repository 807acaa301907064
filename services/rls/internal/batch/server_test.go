package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	batchv1 "github.com/sidemesh/sidemesh/proto/ratelimitbatch/v1"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
	"github.com/sidemesh/sidemesh/services/rls/internal/service"
)

// startServer serves the real rate-limit service (memory backend) over real
// gRPC on 127.0.0.1, unary and batch side by side, as bin/rls does.
func startServer(t *testing.T, yaml string) batchv1.RateLimitBatchClient {
	t.Helper()
	cfg, err := rules.Parse([]rules.File{{Name: "r.yaml", Data: []byte(yaml)}})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Options{Backend: limiter.NewMemory(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	svc.SetRules(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(gs, svc)
	batchv1.RegisterRateLimitBatchServer(gs, New(svc, 0))
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return batchv1.NewRateLimitBatchClient(conn)
}

func call(t *testing.T, id uint64, r *rlsv3.RateLimitRequest) *batchv1.Call {
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return &batchv1.Call{Id: id, Request: b}
}

func user(u string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: u}}}}}
}

// TestBatchAnswersEveryCallLikeUnary: two batches on one stream — eight
// calls for one user under a limit of 5, a call with no descriptors, bytes
// that are no RateLimitRequest, and an unknown domain — get one answer
// each with the unary RPC's semantics; closing the send side ends the
// stream after the last answer.
func TestBatchAnswersEveryCallLikeUnary(t *testing.T) {
	cl := startServer(t, "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cl.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("u%d", time.Now().UnixNano())
	var first []*batchv1.Call
	for i := range 8 {
		first = append(first, call(t, uint64(i+1), user(u)))
	}
	second := []*batchv1.Call{
		call(t, 100, &rlsv3.RateLimitRequest{Domain: "d"}),
		{Id: 101, Request: []byte{0xff, 0xff, 0xff}},
		call(t, 102, &rlsv3.RateLimitRequest{Domain: "nobody", Descriptors: user(u).Descriptors}),
	}
	if err := st.Send(&batchv1.Batch{Calls: first}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&batchv1.Batch{Calls: second}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*batchv1.Answer{}
	for {
		a, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		for _, an := range a.GetAnswers() {
			if got[an.GetId()] != nil {
				t.Fatalf("call %d answered twice", an.GetId())
			}
			got[an.GetId()] = an
		}
	}
	if len(got) != 11 {
		t.Fatalf("%d answers, want 11", len(got))
	}
	ok, over := 0, 0
	for id := uint64(1); id <= 8; id++ {
		a := got[id]
		if a.GetCode() != 0 {
			t.Fatalf("call %d: code %d %s", id, a.GetCode(), a.GetMessage())
		}
		var resp rlsv3.RateLimitResponse
		if err := proto.Unmarshal(a.GetResponse(), &resp); err != nil {
			t.Fatal(err)
		}
		switch resp.GetOverallCode() {
		case rlsv3.RateLimitResponse_OK:
			ok++
		case rlsv3.RateLimitResponse_OVER_LIMIT:
			over++
		}
	}
	if ok != 5 || over != 3 {
		t.Fatalf("ok %d over %d, want 5 and 3", ok, over)
	}
	if c := codes.Code(got[100].GetCode()); c != codes.InvalidArgument || got[100].GetMessage() == "" {
		t.Fatalf("no descriptors: %v %q, want InvalidArgument with a reason", c, got[100].GetMessage())
	}
	if c := codes.Code(got[101].GetCode()); c != codes.InvalidArgument {
		t.Fatalf("garbage request: %v, want InvalidArgument", c)
	}
	var resp rlsv3.RateLimitResponse
	if err := proto.Unmarshal(got[102].GetResponse(), &resp); err != nil || got[102].GetCode() != 0 || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("unknown domain: code %d %v %v, want OK", got[102].GetCode(), resp.GetOverallCode(), err)
	}
}

// gate is a Checker that holds every call until released, counting them.
type gate struct {
	entered chan struct{}
	release chan struct{}
	seen    atomic.Int64
}

func (g *gate) ShouldRateLimit(ctx context.Context, _ *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	g.seen.Add(1)
	g.entered <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}, nil
}

// TestDrainAnswersWhatItTookAndEndsStreams: Drain waits for the calls a
// stream already took, delivers their answers, ends the stream with OK
// (so the client knows the rest were never processed), refuses new streams,
// and processes nothing sent after it.
func TestDrainAnswersWhatItTookAndEndsStreams(t *testing.T) {
	g := &gate{entered: make(chan struct{}, 16), release: make(chan struct{})}
	srv := New(g, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	batchv1.RegisterRateLimitBatchServer(gs, srv)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := batchv1.NewRateLimitBatchClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cl.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var calls []*batchv1.Call
	for i := range 3 {
		calls = append(calls, call(t, uint64(i+1), user("a")))
	}
	if err := st.Send(&batchv1.Batch{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		<-g.entered // all three taken and in the checker
	}
	drained := make(chan error, 1)
	go func() { drained <- srv.Drain(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		srv.mu.RLock()
		d := srv.draining
		srv.mu.RUnlock()
		if d {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("drain never began")
		}
		time.Sleep(time.Millisecond)
	}
	// Sent after the drain began: never processed.
	_ = st.Send(&batchv1.Batch{Calls: []*batchv1.Call{call(t, 9, user("b"))}})
	close(g.release)
	got := map[uint64]bool{}
	for {
		a, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream ended with %v, want OK (EOF)", err)
		}
		for _, an := range a.GetAnswers() {
			got[an.GetId()] = true
		}
	}
	if len(got) != 3 || !got[1] || !got[2] || !got[3] {
		t.Fatalf("answers %v, want exactly calls 1, 2, 3", got)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if n := g.seen.Load(); n != 3 {
		t.Fatalf("the checker saw %d calls, want 3 (none after the drain)", n)
	}
	// A stream opened while draining ends at once, cleanly.
	st2, err := cl.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("new stream while draining: %v, want EOF", err)
	}
}
