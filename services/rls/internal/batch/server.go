// Package batch serves sidemesh's RateLimitBatch stream (proto/ratelimitbatch)
// over any ShouldRateLimit handler: calls arrive in batches on one stream,
// each is answered exactly as the unary RPC would answer it, and answers
// that complete together leave together. A proxy that batches pays the
// HTTP/2 framing, syscalls and handler wake-ups once per batch, which is
// most of a unary call's cost.
package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	batchv1 "github.com/sidemesh/sidemesh/proto/ratelimitbatch/v1"
)

// Checker is the unary handler every call is answered by.
type Checker interface {
	ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)
}

// BatchChecker answers many requests at once, each exactly as
// ShouldRateLimit would (the rate-limit service with a Redis backend: one
// hand-off to the pipeline for the whole batch).
type BatchChecker interface {
	ShouldRateLimitBatch(ctx context.Context, reqs []*rlsv3.RateLimitRequest, resps []*rlsv3.RateLimitResponse, errs []error)
}

// DefaultMaxInFlight bounds the calls one stream may have outstanding; past
// it the server stops reading and HTTP/2 flow control pushes back.
const DefaultMaxInFlight = 4096

// maxAnswers bounds one Answers message.
const maxAnswers = 512

// Server implements batchv1.RateLimitBatchServer.
type Server struct {
	batchv1.UnimplementedRateLimitBatchServer
	checker     Checker
	maxInFlight int

	// Drain: mu guards draining against a stream taking a new call, so
	// once Drain holds it no stream starts one.
	mu       sync.RWMutex
	draining bool
	drain    chan struct{}
	streams  sync.WaitGroup
}

// New serves c. maxInFlight ≤ 0 means DefaultMaxInFlight.
func New(c Checker, maxInFlight int) *Server {
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	return &Server{checker: c, maxInFlight: maxInFlight, drain: make(chan struct{})}
}

// Drain ends every stream cleanly: calls already taken are answered, calls
// not yet read are left unprocessed, and each stream ends with OK, which
// tells the client that every unanswered call was never processed (so it
// can safely send those again elsewhere). New streams end at once. Call it
// after the gRPC server stopped taking new connections (GracefulStop sends
// GOAWAY), so clients move to other replicas; it returns when every stream
// has ended or ctx is done.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	if !s.draining {
		s.draining = true
		close(s.drain)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.streams.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("draining rate-limit batch streams: %w", ctx.Err())
	}
}

// take reserves one in-flight call unless the server is draining.
func (s *Server) take(wg *sync.WaitGroup) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.draining {
		return false
	}
	wg.Add(1)
	return true
}

// Check answers every call of every batch on the stream until the client
// closes its side, then returns once every answer is sent.
func (s *Server) Check(stream grpc.BidiStreamingServer[batchv1.Batch, batchv1.Answers]) error {
	s.mu.RLock()
	if s.draining {
		s.mu.RUnlock()
		return nil
	}
	s.streams.Add(1)
	s.mu.RUnlock()
	defer s.streams.Done()

	ctx := stream.Context()
	out := make(chan *batchv1.Answer, s.maxInFlight)
	slots := make(chan struct{}, s.maxInFlight)
	sendErr := make(chan error, 1)
	go func() { sendErr <- s.send(stream, out, slots) }()

	// The receive loop runs on its own goroutine so a drain need not wait
	// for the client's next message; after the handler returns, its Recv
	// fails and it exits.
	var wg sync.WaitGroup
	recvErr := make(chan error, 1)
	go func() { recvErr <- s.receive(ctx, stream, out, slots, &wg) }()
	var err error
	select {
	case err = <-recvErr:
	case <-s.drain:
	}
	wg.Wait()
	close(out)
	if serr := <-sendErr; err == nil {
		err = serr
	}
	return err
}

func (s *Server) receive(ctx context.Context, stream grpc.BidiStreamingServer[batchv1.Batch, batchv1.Answers], out chan<- *batchv1.Answer, slots chan struct{}, wg *sync.WaitGroup) error {
	for {
		b, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		// A message's calls are answered off the receive loop, which never
		// waits on the backend: together by a BatchChecker, otherwise each
		// on its own goroutine so the backend sees them concurrently.
		calls := b.GetCalls()
		for range calls {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if !s.take(wg) {
			return nil // draining: these calls and the rest stay unprocessed
		}
		if bc, ok := s.checker.(BatchChecker); ok {
			go func() {
				defer wg.Done()
				s.answerBatch(ctx, bc, calls, out)
			}()
			continue
		}
		for _, c := range calls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out <- s.answer(ctx, c)
			}()
		}
		wg.Done()
	}
}

// answerBatch runs a message's calls through one ShouldRateLimitBatch.
func (s *Server) answerBatch(ctx context.Context, bc BatchChecker, calls []*batchv1.Call, out chan<- *batchv1.Answer) {
	reqs := make([]*rlsv3.RateLimitRequest, 0, len(calls))
	ids := make([]uint64, 0, len(calls))
	for _, c := range calls {
		req, bad := decode(c)
		if bad != nil {
			out <- bad
			continue
		}
		reqs = append(reqs, req)
		ids = append(ids, c.GetId())
	}
	if len(reqs) == 0 {
		return
	}
	resps := make([]*rlsv3.RateLimitResponse, len(reqs))
	errs := make([]error, len(reqs))
	bc.ShouldRateLimitBatch(ctx, reqs, resps, errs)
	for i := range reqs {
		out <- encode(ids[i], resps[i], errs[i])
	}
}

// answer runs one call. Failures become the status ShouldRateLimit would
// have returned.
func (s *Server) answer(ctx context.Context, c *batchv1.Call) *batchv1.Answer {
	req, bad := decode(c)
	if bad != nil {
		return bad
	}
	resp, err := s.checker.ShouldRateLimit(ctx, req)
	return encode(c.GetId(), resp, err)
}

// decode reads a call's request; bytes that are no RateLimitRequest get
// an INVALID_ARGUMENT answer instead.
func decode(c *batchv1.Call) (*rlsv3.RateLimitRequest, *batchv1.Answer) {
	req := &rlsv3.RateLimitRequest{}
	if err := proto.Unmarshal(c.GetRequest(), req); err != nil {
		return nil, &batchv1.Answer{Id: c.GetId(), Code: int32(codes.InvalidArgument),
			Message: fmt.Sprintf("call %d: request is not a RateLimitRequest: %v", c.GetId(), err)}
	}
	return req, nil
}

// encode turns one call's outcome into its answer; a failure carries the
// status ShouldRateLimit would have returned.
func encode(id uint64, resp *rlsv3.RateLimitResponse, err error) *batchv1.Answer {
	a := &batchv1.Answer{Id: id}
	if err != nil {
		st := status.Convert(err)
		a.Code, a.Message = int32(st.Code()), st.Message()
		if st.Code() == codes.OK {
			a.Code = int32(codes.Unknown)
		}
		return a
	}
	if a.Response, err = proto.Marshal(resp); err != nil {
		a.Code, a.Message = int32(codes.Internal), fmt.Sprintf("encoding the response: %v", err)
	}
	return a
}

// send groups the answers that are ready into one message. No timer: while
// one Send is on the wire the next answers queue up, so batches grow with
// load and a lone answer leaves at once.
func (s *Server) send(stream grpc.BidiStreamingServer[batchv1.Batch, batchv1.Answers], out <-chan *batchv1.Answer, slots <-chan struct{}) error {
	var sendErr error
	msg := &batchv1.Answers{}
	for a := range out {
		// Let the handlers that are ready finish first, so their answers
		// leave in this message (on few cores the woken sender would
		// otherwise run first and send one answer per message).
		runtime.Gosched()
		msg.Answers = append(msg.Answers[:0], a)
	fill:
		for len(msg.Answers) < maxAnswers {
			select {
			case more, ok := <-out:
				if !ok {
					break fill
				}
				msg.Answers = append(msg.Answers, more)
			default:
				break fill
			}
		}
		for range msg.Answers {
			<-slots
		}
		if sendErr == nil {
			// After a failed Send keep draining so no handler blocks.
			sendErr = stream.Send(msg)
		}
	}
	return sendErr
}
