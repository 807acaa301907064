package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	batchv1 "github.com/sidemesh/sidemesh/proto/ratelimitbatch/v1"
)

// BatchOptions tune the batching client.
type BatchOptions struct {
	// Streams is how many RateLimitBatch streams run at once (each lands on
	// one RLS endpoint, picked round robin). Default 2.
	Streams int
	// MaxBatch bounds the calls in one message. Default 256.
	MaxBatch int
	// Window bounds the messages in flight (sent and not answered yet)
	// on all the client's streams together. While it is full, new calls
	// wait and leave together in one message as soon as an answer comes
	// back — TCP's Nagle rule applied to calls: no timer, and a lone call
	// never waits (nothing is in flight). Fewer, larger messages cost the
	// proxy, RLS and Redis fewer syscalls and wake-ups per call. Default 1.
	Window int
	// Hold bounds how long an unanswered message keeps its place in the
	// window, so one slow answer cannot stall the calls behind it.
	// Default 2ms.
	Hold time.Duration
	// MaxStreamAge: a stream older than this is closed gracefully and
	// reopened, so streams spread again over endpoints that changed.
	// Default 1 minute.
	MaxStreamAge time.Duration
	// Fallback is how long to use unary ShouldRateLimit after the server
	// said UNIMPLEMENTED (envoyproxy/ratelimit, older bin/rls) before trying
	// the stream again. Default 1 minute.
	Fallback time.Duration
	Log      *slog.Logger
	// Metrics, when set, count what the client does (see BatchMetrics).
	Metrics *BatchMetrics
}

// BatchMetrics are the client's Prometheus series, per RLS cluster: calls
// sent on streams, the stream messages they went in, calls sent unary
// (fallback or reconnecting), and streams up.
type BatchMetrics struct {
	Batched, Messages, Unary prometheus.Counter
	Streams                  prometheus.Gauge
}

// NewBatchMetrics registers the series on reg (or finds them registered)
// and returns cluster's children.
func NewBatchMetrics(reg prometheus.Registerer, cluster string) (*BatchMetrics, error) {
	counter := func(name, help string) (*prometheus.CounterVec, error) {
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"cluster"}))
	}
	b, err := counter("sidemesh_proxy_rls_batched_calls_total", "RLS calls sent on sidemesh's batch stream.")
	if err != nil {
		return nil, err
	}
	m, err := counter("sidemesh_proxy_rls_batch_messages_total", "Batch stream messages sent to RLS (batched calls / messages = mean batch size).")
	if err != nil {
		return nil, err
	}
	u, err := counter("sidemesh_proxy_rls_unary_calls_total", "RLS calls sent as unary ShouldRateLimit (no batch stream up: RLS without it, or reconnecting).")
	if err != nil {
		return nil, err
	}
	g, err := register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sidemesh_proxy_rls_batch_streams", Help: "Batch streams to RLS currently up."}, []string{"cluster"}))
	if err != nil {
		return nil, err
	}
	return &BatchMetrics{Batched: b.WithLabelValues(cluster), Messages: m.WithLabelValues(cluster),
		Unary: u.WithLabelValues(cluster), Streams: g.WithLabelValues(cluster)}, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		are, ok := err.(prometheus.AlreadyRegisteredError)
		if !ok {
			var zero C
			return zero, fmt.Errorf("rls batch metrics: %w", err)
		}
		return are.ExistingCollector.(C), nil
	}
	return c, nil
}

// BatchClient is an RLSClient that sends calls as batches on sidemesh's
// RateLimitBatch streams: under load the calls that arrive while one batch
// is on the wire leave together as the next, with no timer, so a lone call
// is never delayed. While no stream is up (server without the extension,
// reconnecting) calls go out as plain unary ShouldRateLimit, so it works
// against any RLS.
type BatchClient struct {
	unary  rlsv3.RateLimitServiceClient
	stream batchv1.RateLimitBatchClient
	o      BatchOptions
	queue  chan *call
	// slots: one token per message in flight (capacity Window).
	slots chan struct{}
	live  atomic.Int32 // streams that can take calls
	ids   atomic.Uint64
	// unaryUntil (unix nanos): after UNIMPLEMENTED, unary until then.
	unaryUntil atomic.Int64
	batched    atomic.Uint64
	batches    atomic.Uint64
}

type call struct {
	id   uint64
	msg  uint64 // the stream message it went in
	req  []byte
	done chan callResult // buffered: a late answer never blocks
}

type callResult struct {
	resp []byte
	err  error
}

// NewBatchClient runs o.Streams stream workers over conn until ctx ends.
func NewBatchClient(ctx context.Context, conn grpc.ClientConnInterface, o BatchOptions) *BatchClient {
	if o.Streams <= 0 {
		o.Streams = 2
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 256
	}
	if o.Window <= 0 {
		o.Window = 1
	}
	if o.Hold <= 0 {
		o.Hold = 2 * time.Millisecond
	}
	if o.MaxStreamAge <= 0 {
		o.MaxStreamAge = time.Minute
	}
	if o.Fallback <= 0 {
		o.Fallback = time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &BatchClient{
		unary: rlsv3.NewRateLimitServiceClient(conn), stream: batchv1.NewRateLimitBatchClient(conn),
		o: o, queue: make(chan *call, 4096), slots: make(chan struct{}, o.Window),
	}
	for range o.Streams {
		go c.worker(ctx)
	}
	return c
}

// BatchStats: calls sent batched and the messages they went in.
func (c *BatchClient) BatchStats() (calls, batches uint64) { return c.batched.Load(), c.batches.Load() }

// Streaming reports whether calls currently go on a stream.
func (c *BatchClient) Streaming() bool { return c.live.Load() > 0 }

// ShouldRateLimit answers exactly as the unary RPC would.
func (c *BatchClient) ShouldRateLimit(ctx context.Context, in *rlsv3.RateLimitRequest, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error) {
	return c.ShouldRateLimitWithin(ctx, in, 0, opts...)
}

// timers are reused across calls: a call's deadline then costs no
// context (whose parent registration takes a lock and a map entry per
// request) and no new timer.
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// ShouldRateLimitWithin is ShouldRateLimit bounded by timeout (0: by ctx
// only) without deriving a context per call.
func (c *BatchClient) ShouldRateLimitWithin(ctx context.Context, in *rlsv3.RateLimitRequest, timeout time.Duration, opts ...grpc.CallOption) (*rlsv3.RateLimitResponse, error) {
	if c.live.Load() == 0 {
		if m := c.o.Metrics; m != nil {
			m.Unary.Inc()
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return c.unary.ShouldRateLimit(ctx, in, opts...)
	}
	b, err := proto.Marshal(in)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the rate limit request: %v", err)
	}
	var expired <-chan time.Time
	if timeout > 0 {
		t := timers.Get().(*time.Timer)
		t.Reset(timeout)
		defer func() { t.Stop(); timers.Put(t) }()
		expired = t.C
	}
	cl := &call{id: c.ids.Add(1), req: b, done: make(chan callResult, 1)}
	select {
	case c.queue <- cl:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-expired:
		return nil, status.Error(codes.DeadlineExceeded, "rate limit call timed out")
	}
	select {
	case r := <-cl.done:
		if r.err != nil {
			return nil, r.err
		}
		resp := &rlsv3.RateLimitResponse{}
		if err := proto.Unmarshal(r.resp, resp); err != nil {
			return nil, status.Errorf(codes.Internal, "decoding the rate limit response: %v", err)
		}
		return resp, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-expired:
		return nil, status.Error(codes.DeadlineExceeded, "rate limit call timed out")
	}
}

// worker keeps one stream open, reopening it with jittered backoff; while
// it has none it answers queued calls by unary RPCs so none wait for it.
func (c *BatchClient) worker(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if until := c.unaryUntil.Load(); time.Now().UnixNano() < until {
			c.serveUnary(ctx, time.Unix(0, until))
			continue
		}
		ok, err := c.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			c.o.Log.Info("rls has no RateLimitBatch stream; using unary ShouldRateLimit", "retry_in", c.o.Fallback)
			c.unaryUntil.Store(time.Now().Add(c.o.Fallback).UnixNano())
			continue
		}
		if ok {
			backoff = 50 * time.Millisecond
			if err == nil {
				continue // aged out, reopen at once
			}
		}
		c.o.Log.Debug("rls batch stream ended", "err", err)
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, 5*time.Second)
		c.serveUnary(ctx, time.Now().Add(wait))
	}
}

// serveUnary answers queued calls one unary RPC each until deadline.
func (c *BatchClient) serveUnary(ctx context.Context, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case cl := <-c.queue:
			go c.unaryCall(ctx, cl)
		}
	}
}

func (c *BatchClient) unaryCall(ctx context.Context, cl *call) {
	if m := c.o.Metrics; m != nil {
		m.Unary.Inc()
	}
	var req rlsv3.RateLimitRequest
	if err := proto.Unmarshal(cl.req, &req); err != nil {
		cl.done <- callResult{err: status.Errorf(codes.Internal, "re-decoding a queued request: %v", err)}
		return
	}
	// The caller bounds its own wait; this bound only stops a stuck call.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.unary.ShouldRateLimit(cctx, &req)
	if err != nil {
		cl.done <- callResult{err: err}
		return
	}
	b, err := proto.Marshal(resp)
	cl.done <- callResult{resp: b, err: err}
}

// runStream serves calls on one stream until it fails or ages out. ok
// reports that the server accepted the stream (it answered at least once
// or the stream aged out cleanly).
func (c *BatchClient) runStream(ctx context.Context) (ok bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.stream.Check(sctx)
	if err != nil {
		return false, fmt.Errorf("opening the batch stream: %w", err)
	}
	var (
		mu       sync.Mutex
		pending  = map[uint64]*call{}
		answered atomic.Bool
		recvDone = make(chan error, 1)
		// inflight: this stream's messages holding a window slot (under
		// mu), oldest first.
		inflight []sent
		seq      uint64
	)
	// release gives back the slot of message m if it still holds one
	// (under mu).
	release := func(m uint64) {
		for i := range inflight {
			if inflight[i].seq == m {
				inflight = slices.Delete(inflight, i, i+1)
				<-c.slots
				return
			}
		}
	}
	defer func() {
		mu.Lock()
		for len(inflight) > 0 {
			release(inflight[0].seq)
		}
		mu.Unlock()
	}()
	// failAll answers every outstanding call of this stream with err.
	failAll := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		for id, cl := range pending {
			cl.done <- callResult{err: err}
			delete(pending, id)
		}
	}
	// replay sends every unanswered call again as a unary RPC. Only safe
	// when the server processed none of them: it refused the stream
	// (UNIMPLEMENTED before any answer) or ended it cleanly (OK status: a
	// draining bin/rls answers every call it read before it ends).
	replay := func() {
		mu.Lock()
		defer mu.Unlock()
		for id, cl := range pending {
			delete(pending, id)
			go c.unaryCall(ctx, cl)
		}
	}
	// abort ends the stream on err.
	abort := func(err error) (bool, error) {
		if status.Code(err) == codes.Unimplemented && !answered.Load() {
			replay()
			return false, err
		}
		if errors.Is(err, io.EOF) {
			replay()
			return true, errServerEnded
		}
		failAll(status.Errorf(codes.Unavailable, "rls batch stream: %v", err))
		return answered.Load(), err
	}
	go func() {
		for {
			a, err := st.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			answered.Store(true)
			mu.Lock()
			for _, an := range a.GetAnswers() {
				cl, found := pending[an.GetId()]
				if !found {
					continue
				}
				delete(pending, an.GetId())
				if len(inflight) > 0 {
					release(cl.msg)
				}
				if an.GetCode() != 0 {
					cl.done <- callResult{err: status.Error(codes.Code(an.GetCode()), an.GetMessage())}
				} else {
					cl.done <- callResult{resp: an.GetResponse()}
				}
			}
			mu.Unlock()
		}
	}()

	c.live.Add(1)
	defer c.live.Add(-1)
	if m := c.o.Metrics; m != nil {
		m.Streams.Inc()
		defer m.Streams.Dec()
	}
	age := time.NewTimer(c.o.MaxStreamAge)
	defer age.Stop()
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	msg := &batchv1.Batch{}
	for {
		// A slot in the window first: while the window is full, calls
		// wait in the queue and leave together. An unanswered message of
		// this stream gives its slot up after Hold.
		mu.Lock()
		holding := len(inflight) > 0
		if holding {
			hold.Reset(time.Until(inflight[0].at.Add(c.o.Hold)))
		}
		mu.Unlock()
		select {
		case c.slots <- struct{}{}:
		case <-hold.C:
			holding = false
			mu.Lock()
			if len(inflight) > 0 {
				release(inflight[0].seq)
			}
			mu.Unlock()
			continue
		case err := <-recvDone:
			return abort(err)
		case <-age.C:
			return c.closeStream(st, recvDone, replay, failAll)
		case <-ctx.Done():
			failAll(status.FromContextError(ctx.Err()).Err())
			return answered.Load(), ctx.Err()
		}
		if holding && !hold.Stop() {
			select {
			case <-hold.C:
			default:
			}
		}
		var first *call
		select {
		case first = <-c.queue:
		case err := <-recvDone:
			<-c.slots
			return abort(err)
		case <-age.C:
			<-c.slots
			return c.closeStream(st, recvDone, replay, failAll)
		case <-ctx.Done():
			<-c.slots
			failAll(status.FromContextError(ctx.Err()).Err())
			return answered.Load(), ctx.Err()
		}
		// Let the goroutines that are ready run first: under load each
		// adds its call to the queue, and they all leave in this message.
		// (Without it, on few cores the woken worker runs before anyone
		// else and sends one call per message.) Idle: returns at once.
		runtime.Gosched()
		seq++
		first.msg = seq
		msg.Calls = append(msg.Calls[:0], &batchv1.Call{Id: first.id, Request: first.req})
		mu.Lock()
		pending[first.id] = first
	fill:
		for len(msg.Calls) < c.o.MaxBatch {
			select {
			case cl := <-c.queue:
				cl.msg = seq
				pending[cl.id] = cl
				msg.Calls = append(msg.Calls, &batchv1.Call{Id: cl.id, Request: cl.req})
			default:
				break fill
			}
		}
		inflight = append(inflight, sent{seq: seq, at: time.Now()})
		mu.Unlock()
		c.batched.Add(uint64(len(msg.Calls)))
		c.batches.Add(1)
		if m := c.o.Metrics; m != nil {
			m.Batched.Add(float64(len(msg.Calls)))
			m.Messages.Inc()
		}
		if err := st.Send(msg); err != nil {
			// The real reason comes from Recv.
			return abort(<-recvDone)
		}
	}
}

// sent is a message holding a window slot.
type sent struct {
	seq uint64
	at  time.Time
}

// closeStream ends an aged stream: no more sends, every outstanding answer
// still delivered.
func (c *BatchClient) closeStream(st grpc.BidiStreamingClient[batchv1.Batch, batchv1.Answers], recvDone <-chan error, replay func(), failAll func(error)) (bool, error) {
	if err := st.CloseSend(); err != nil {
		failAll(status.Errorf(codes.Unavailable, "rls batch stream: %v", err))
		return true, err
	}
	err := <-recvDone
	if errors.Is(err, io.EOF) {
		replay() // normally none: the server answers all it read
		return true, nil
	}
	failAll(status.Errorf(codes.Unavailable, "rls batch stream: %v", err))
	return true, err
}

// errServerEnded: the server ended the stream cleanly (draining).
var errServerEnded = errors.New("rls ended the batch stream (draining)")
