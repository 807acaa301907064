package h2grpc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const method = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

// testRLS answers according to the request's domain:
//
//	"ok"        OK, echoing the descriptor values as response headers
//	"err:CODE:MSG" the status CODE with MSG (trailers-only)
//	"block"     waits until its context ends
//	"big:N"     OK with N response headers of 100 bytes each
//	"size"      OK with one header giving the request's size
//	"trailer:N" OK with a trailer (metadata) of N bytes
type testRLS struct {
	rlspb.UnimplementedRateLimitServiceServer
	entered  chan struct{}   // "block" handlers signal here on entry
	ended    chan error      // "block" handlers send their ctx error here on exit
	inflight atomic.Int64    // concurrent handlers
	maxSeen  atomic.Int64    // most concurrent handlers seen
	gate     chan struct{}   // if set, "ok" handlers wait on it (to pile up streams)
	seenMu   sync.Mutex      //
	timeouts []time.Duration // remaining deadline seen by "block" handlers
}

func newTestRLS() *testRLS {
	return &testRLS{entered: make(chan struct{}, 1024), ended: make(chan error, 1024)}
}

func (s *testRLS) ShouldRateLimit(ctx context.Context, req *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for m := s.maxSeen.Load(); n > m && !s.maxSeen.CompareAndSwap(m, n); m = s.maxSeen.Load() {
	}
	d := req.GetDomain()
	switch {
	case d == "ok":
		if s.gate != nil {
			<-s.gate
		}
		r := &rlspb.RateLimitResponse{OverallCode: rlspb.RateLimitResponse_OVER_LIMIT}
		for _, desc := range req.Descriptors {
			for _, e := range desc.Entries {
				r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, &corev3.HeaderValue{Key: e.Key, Value: e.Value})
			}
			r.Statuses = append(r.Statuses, &rlspb.RateLimitResponse_DescriptorStatus{Code: rlspb.RateLimitResponse_OK, LimitRemaining: 7})
		}
		return r, nil
	case strings.HasPrefix(d, "err:"):
		parts := strings.SplitN(d, ":", 3)
		c, _ := strconv.Atoi(parts[1])
		return nil, status.Error(codes.Code(c), parts[2])
	case d == "block":
		if dl, ok := ctx.Deadline(); ok {
			s.seenMu.Lock()
			s.timeouts = append(s.timeouts, time.Until(dl))
			s.seenMu.Unlock()
		}
		s.entered <- struct{}{}
		<-ctx.Done()
		s.ended <- ctx.Err()
		return nil, ctx.Err()
	case strings.HasPrefix(d, "big:"):
		n, _ := strconv.Atoi(d[4:])
		r := &rlspb.RateLimitResponse{}
		for i := range n {
			r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, &corev3.HeaderValue{Key: fmt.Sprintf("h%06d", i), Value: strings.Repeat("v", 93)})
		}
		return r, nil
	case d == "size":
		return &rlspb.RateLimitResponse{ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "size", Value: strconv.Itoa(proto.Size(req))}}}, nil
	case strings.HasPrefix(d, "trailer:"):
		n, _ := strconv.Atoi(d[8:])
		grpc.SetTrailer(ctx, map[string][]string{"x-big": {strings.Repeat("t", n)}})
		return &rlspb.RateLimitResponse{OverallCode: rlspb.RateLimitResponse_OK}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "unknown test domain")
}

func startGRPC(t testing.TB, svc rlspb.RateLimitServiceServer, opts ...grpc.ServerOption) (*grpc.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	rlspb.RegisterRateLimitServiceServer(s, svc)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return s, ln.Addr().String()
}

func dial(t testing.TB, addr string, opts ...Option) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func grpcClient(t testing.TB, addr string) rlspb.RateLimitServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rlspb.NewRateLimitServiceClient(cc)
}

// call invokes ShouldRateLimit over c, marshalling and unmarshalling.
func rpc(ctx context.Context, c *Conn, req *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := c.Invoke(ctx, method, b)
	if err != nil {
		return nil, err
	}
	resp := &rlspb.RateLimitResponse{}
	if err := proto.Unmarshal(out, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

func req(domain string, values ...string) *rlspb.RateLimitRequest {
	r := &rlspb.RateLimitRequest{Domain: domain, HitsAddend: 1}
	for _, v := range values {
		r.Descriptors = append(r.Descriptors, &rlcommon.RateLimitDescriptor{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: v}}})
	}
	return r
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sameAsGRPC checks that h2grpc and grpc-go give the same answer or status.
func sameAsGRPC(t *testing.T, ctx context.Context, c *Conn, g rlspb.RateLimitServiceClient, r *rlspb.RateLimitRequest) *rlspb.RateLimitResponse {
	t.Helper()
	got, err := rpc(ctx, c, r)
	want, werr := g.ShouldRateLimit(ctx, r)
	if status.Code(err) != status.Code(werr) || status.Convert(err).Message() != status.Convert(werr).Message() {
		t.Fatalf("domain %.40q: h2grpc error %v, grpc-go error %v", r.Domain, err, werr)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("domain %.40q: h2grpc answered %v, grpc-go %v", r.Domain, got, want)
	}
	return got
}

func TestNoopServerMatchesGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(s, noop{})
	go s.Serve(ln)
	defer s.Stop()
	ctx := ctxT(t)
	got := sameAsGRPC(t, ctx, dial(t, ln.Addr().String()), grpcClient(t, ln.Addr().String()), req("d", "a"))
	if got.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("noop answered %v", got)
	}
}

type noop struct {
	rlspb.UnimplementedRateLimitServiceServer
}

func (noop) ShouldRateLimit(context.Context, *rlspb.RateLimitRequest) (*rlspb.RateLimitResponse, error) {
	return &rlspb.RateLimitResponse{OverallCode: rlspb.RateLimitResponse_OK}, nil
}

func TestAnswersAndStatusesMatchGRPC(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	c, g, ctx := dial(t, addr), grpcClient(t, addr), ctxT(t)
	sameAsGRPC(t, ctx, c, g, req("ok", "a", "b", "ünïcode"))
	sameAsGRPC(t, ctx, c, g, req("ok"))
	for _, tc := range []struct {
		code codes.Code
		msg  string
	}{
		{codes.ResourceExhausted, "slow down"},
		{codes.InvalidArgument, "bad 100% ünïcode\nnewline"},
		{codes.Unavailable, ""},
		{codes.Internal, strings.Repeat("x", 40<<10)}, // trailers-only block > 16 KiB: CONTINUATION
	} {
		r := req(fmt.Sprintf("err:%d:%s", tc.code, tc.msg))
		sameAsGRPC(t, ctx, c, g, r)
		_, err := rpc(ctx, c, r)
		if st := status.Convert(err); st.Code() != tc.code || st.Message() != tc.msg {
			t.Fatalf("status %v %.60q, want %v %.60q", st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	// Unknown method: grpc-go answers Unimplemented, trailers-only.
	if _, err := c.Invoke(ctx, "/no.Such/Method", nil); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown method: %v", err)
	}
}

func TestLargeResponseAndTrailers(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	g, ctx := grpcClient(t, addr), ctxT(t)
	// Small windows make the server wait for our WINDOW_UPDATEs on both the
	// stream and the connection; 3000 headers are ≈ 330 KiB, many DATA frames.
	for _, c := range []*Conn{dial(t, addr), dial(t, addr, WithWindows(1000, 65535))} {
		got := sameAsGRPC(t, ctx, c, g, req("big:3000"))
		if len(got.ResponseHeadersToAdd) != 3000 {
			t.Fatalf("%d headers", len(got.ResponseHeadersToAdd))
		}
		// Several big answers at once share the connection window.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				r, err := rpc(ctx, c, req("big:1000"))
				if err == nil && len(r.ResponseHeadersToAdd) != 1000 {
					err = fmt.Errorf("%d headers", len(r.ResponseHeadersToAdd))
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		// A 40 KiB trailer comes as HEADERS + CONTINUATION.
		sameAsGRPC(t, ctx, c, g, req("trailer:40000"))
	}
	c := dial(t, addr, WithMaxRecvMsgSize(1000))
	if _, err := rpc(ctx, c, req("big:100")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("over max message size: %v", err)
	}
	if _, err := rpc(ctx, c, req("ok", "still works")); err != nil {
		t.Fatalf("after a reset stream: %v", err)
	}
}

func TestLargeRequest(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	c, ctx := dial(t, addr), ctxT(t)
	for _, n := range []int{20 << 10, 300 << 10} { // > max frame size; > the server's initial windows
		r := req("size", strings.Repeat("v", n))
		got, err := rpc(ctx, c, r)
		if err != nil {
			t.Fatal(err)
		}
		if want := strconv.Itoa(proto.Size(r)); got.ResponseHeadersToAdd[0].Value != want {
			t.Fatalf("server saw %s bytes, want %s", got.ResponseHeadersToAdd[0].Value, want)
		}
	}
	// Many at once: they wait for the connection send window in turn.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := rpc(ctx, c, req("size", strings.Repeat("w", 100<<10))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func TestDeadlineAndCancel(t *testing.T) {
	svc := newTestRLS()
	_, addr := startGRPC(t, svc)
	c := dial(t, addr)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := rpc(ctx, c, req("block"))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline: %v", err)
	}
	<-svc.entered
	if err := waitEnded(t, svc); err == nil {
		t.Fatal("handler's context did not end")
	}
	svc.seenMu.Lock()
	seen := svc.timeouts[0]
	svc.seenMu.Unlock()
	if seen <= 0 || seen > 300*time.Millisecond {
		t.Fatalf("server saw deadline in %v, want (0, 300ms] (grpc-timeout)", seen)
	}

	// Cancel once the handler runs: RST_STREAM(CANCEL) ends the handler.
	ctx, cancel = context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := rpc(ctx, c, req("block")); errc <- err }()
	<-svc.entered
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Fatalf("cancel: %v", err)
	}
	if err := waitEnded(t, svc); !errors.Is(err, context.Canceled) {
		t.Fatalf("handler ended with %v, want canceled", err)
	}
	// An expired context never reaches the wire.
	_, err = c.Invoke(ctx, method, nil)
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled before call: %v", err)
	}
	// The connection still works.
	if _, err := rpc(ctxT(t), c, req("ok", "x")); err != nil {
		t.Fatal(err)
	}
}

func waitEnded(t *testing.T, svc *testRLS) error {
	t.Helper()
	select {
	case err := <-svc.ended:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("handler did not end")
		return nil
	}
}

func TestMaxConcurrentStreams(t *testing.T) {
	svc := newTestRLS()
	svc.gate = make(chan struct{})
	_, addr := startGRPC(t, svc, grpc.MaxConcurrentStreams(2))
	c, ctx := dial(t, addr), ctxT(t)
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 64 {
		wg.Go(func() {
			if _, err := rpc(ctx, c, req("ok", strconv.Itoa(i))); err != nil {
				t.Error(err)
				return
			}
			ok.Add(1)
		})
	}
	// Let the handlers go one at a time: only two may ever be running.
	for range 64 {
		select {
		case svc.gate <- struct{}{}:
		case <-ctx.Done():
			t.Fatal("handlers did not arrive")
		}
	}
	wg.Wait()
	if ok.Load() != 64 || svc.maxSeen.Load() > 2 {
		t.Fatalf("%d OK, up to %d handlers at once (limit 2)", ok.Load(), svc.maxSeen.Load())
	}
}

// TestServerStops: Stop and GracefulStop under load fail calls with
// Unavailable (never another code), and no call hangs.
func TestServerStops(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		t.Run(fmt.Sprintf("graceful=%v", graceful), func(t *testing.T) {
			s, addr := startGRPC(t, newTestRLS())
			c, ctx := dial(t, addr), ctxT(t)
			var wg sync.WaitGroup
			var oks, fails atomic.Int64
			busy := make(chan struct{}) // closed after 1000 answers: the server is mid-load
			var once sync.Once
			for range 64 {
				wg.Go(func() {
					for {
						_, err := rpc(ctx, c, req("ok", "a"))
						if err == nil {
							if oks.Add(1) == 1000 {
								once.Do(func() { close(busy) })
							}
							continue
						}
						if status.Code(err) != codes.Unavailable {
							t.Errorf("error %v, want Unavailable", err)
						}
						fails.Add(1)
						return
					}
				})
			}
			select {
			case <-busy:
			case <-ctx.Done():
				t.Fatal("no progress")
			}
			if graceful {
				s.GracefulStop()
			} else {
				s.Stop()
			}
			wg.Wait() // every worker ended with Unavailable
			if fails.Load() != 64 {
				t.Fatalf("%d failures", fails.Load())
			}
			if _, err := rpc(ctx, c, req("ok")); status.Code(err) != codes.Unavailable || c.Usable() {
				t.Fatalf("after stop: %v, usable %v", err, c.Usable())
			}
		})
	}
}

func TestManyConcurrent(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	ctx := ctxT(t)
	conns := []*Conn{dial(t, addr), dial(t, addr)}
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			c := conns[i%2]
			buf, out := []byte(nil), []byte(nil)
			for j := range 300 {
				v := fmt.Sprintf("w%d-%d", i, j)
				var err error
				buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], req("ok", v))
				if err != nil {
					t.Error(err)
					return
				}
				out, err = c.AppendInvoke(ctx, method, buf, out[:0])
				if err != nil {
					t.Error(err)
					return
				}
				r := &rlspb.RateLimitResponse{}
				if err := proto.Unmarshal(out, r); err != nil || len(r.ResponseHeadersToAdd) != 1 || r.ResponseHeadersToAdd[0].Value != v {
					t.Errorf("answer %v (%v) for %s", r, err, v)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestCompressedResponse: a server that compresses despite no
// grpc-accept-encoding gets an Internal error, not garbage.
func TestCompressedResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		w.Write([]byte{1, 0, 0, 0, 2, 0xab, 0xcd})
		w.Header().Set("Grpc-Status", "0")
	})}
	go hs.Serve(ln)
	defer hs.Close()
	c, ctx := dial(t, ln.Addr().String()), ctxT(t)
	if _, err := c.Invoke(ctx, method, []byte{}); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "compressed") {
		t.Fatalf("compressed answer: %v", err)
	}
	// Not gRPC at all: 404 → Unimplemented, as in gRPC's HTTP mapping.
	hs2 := &http.Server{Protocols: &p, Handler: http.NotFoundHandler()}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	go hs2.Serve(ln2)
	defer hs2.Close()
	if _, err := dial(t, ln2.Addr().String()).Invoke(ctx, method, nil); status.Code(err) != codes.Unimplemented {
		t.Fatalf("404: %v", err)
	}
}

func TestHeaderBlockDecodes(t *testing.T) {
	var c Conn
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.opt.authority = "host:1"
	dec := hpack.NewDecoder(4096, nil)
	long := "/" + strings.Repeat("p", 300) // multi-byte lengths
	var sizes []int
	for i, path := range []string{"/a.B/C", "/a.B/C", long, "/a.B/C"} {
		b := c.headerBlockLocked(path, i != 1, time.Duration(i+1)*1500*time.Millisecond)
		sizes = append(sizes, len(b))
		fs, err := dec.DecodeFull(b)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range fs {
			got = append(got, f.Name+"="+f.Value)
		}
		want := ":method=POST :scheme=http :path=" + path + " :authority=host:1 content-type=application/grpc te=trailers"
		if i != 1 {
			want += fmt.Sprintf(" grpc-timeout=%du", (i+1)*1500000)
		}
		if strings.Join(got, " ") != want {
			t.Fatalf("block %d decoded %q", i, got)
		}
	}
	// From the second call on the constant fields are table references.
	// (the last: six one-byte references, then 0x00, len, "grpc-timeout", len, "6000000u").
	if sizes[1] != 6 || sizes[3] != 6+1+1+12+1+8 {
		t.Fatalf("block sizes %v", sizes)
	}
}

func TestEncodeTimeout(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Nanosecond: "1n", 99999999: "99999999n", 100000000: "100000u", 5 * time.Second: "5000000u",
		time.Hour: "3600000m", 1e8 * time.Second: "1666667M", 0: "1n",
	} {
		if got := string(encodeTimeout(nil, d)); got != want {
			t.Errorf("%v: %s, want %s", d, got, want)
		}
	}
	if got := decodeGrpcMessage("a%25b%0A%C3%BC%zz%2"); got != "a%b\nü%zz%2" {
		t.Errorf("decoded %q", got)
	}
}

func TestDialFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Dial(ctxT(t), addr); status.Code(err) != codes.Unavailable {
		t.Fatalf("refused: %v", err)
	}
	// An HTTP/1 server answers the preface with garbage.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			nc.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
			nc.Close()
		}
	}()
	defer ln.Close()
	if _, err := Dial(ctxT(t), ln.Addr().String()); status.Code(err) != codes.Unavailable {
		t.Fatalf("HTTP/1 server: %v", err)
	}
}

// TestStreamIDsExhausted: the last stream id is used, then the connection
// refuses calls with Unavailable so the caller redials.
func TestStreamIDsExhausted(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	c, ctx := dial(t, addr), ctxT(t)
	c.mu.Lock()
	c.nextID = maxStreamID - 2
	c.mu.Unlock()
	for i := range 2 {
		if _, err := rpc(ctx, c, req("ok", "a")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := rpc(ctx, c, req("ok", "a")); status.Code(err) != codes.Unavailable || c.Usable() {
		t.Fatalf("after the last id: %v", err)
	}
}

// TestServerResetsStream: a stream the server refuses (RST_STREAM
// REFUSED_STREAM, here beyond its MAX_CONCURRENT_STREAMS, which we pretend
// not to know) fails that call with Unavailable; the connection goes on.
func TestServerResetsStream(t *testing.T) {
	svc := newTestRLS()
	_, addr := startGRPC(t, svc, grpc.MaxConcurrentStreams(1))
	c, ctx := dial(t, addr), ctxT(t)
	if c.maxStreams != 1 {
		t.Fatalf("max streams %d, want the server's 1", c.maxStreams)
	}
	bctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := rpc(bctx, c, req("block")); errc <- err }()
	<-svc.entered
	c.mu.Lock()
	c.maxStreams = 100
	c.mu.Unlock()
	_, err := rpc(ctx, c, req("ok", "a"))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "REFUSED_STREAM") {
		t.Fatalf("refused stream: %v", err)
	}
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Fatalf("blocked call: %v", err)
	}
	waitEnded(t, svc)
	if _, err := rpc(ctx, c, req("ok", "a")); err != nil {
		t.Fatalf("after the reset: %v", err)
	}
}

// TestUnlimitedStreams: without MAX_CONCURRENT_STREAMS from the server there
// is no limit (RFC 9113), not grpc-go's interim 100.
func TestUnlimitedStreams(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS())
	if c := dial(t, addr); c.maxStreams != math.MaxUint32 {
		t.Fatalf("max streams %d", c.maxStreams)
	}
}

// TestIdlePingsAnswered: PING ACKs wait for a request to carry them, but not
// for ever: an idle connection answers the server's keepalive pings, so the
// server does not close it (grpc-go waits Timeout for the ACK).
func TestIdlePingsAnswered(t *testing.T) {
	_, addr := startGRPC(t, newTestRLS(), grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Second, Timeout: time.Second}))
	c, ctx := dial(t, addr), ctxT(t)
	// A second keepalive ping means the first was acknowledged in time.
	for {
		c.mu.Lock()
		n, err := c.pings, c.err
		c.mu.Unlock()
		if n >= 2 || err != nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no keepalive pings")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := rpc(ctx, c, req("ok", "a")); err != nil {
		t.Fatalf("idle connection: %v", err)
	}
}
