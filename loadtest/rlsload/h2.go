package rlsload

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sidemesh/sidemesh/loadtest/h2grpc"
)

// Client kinds for --client.
const (
	ClientH2   = "h2"   // loadtest/h2grpc: a lean unary client (the default)
	ClientGRPC = "grpc" // a grpc-go ClientConn with the generated client
)

const shouldRateLimit = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

// H2Conn is one connection of the h2 client. h2grpc does not reconnect: a
// connection that got GOAWAY or failed is replaced here, as a grpc-go
// ClientConn would reconnect on its own.
type H2Conn struct {
	addr string
	c    atomic.Pointer[h2grpc.Conn]

	mu      sync.Mutex
	old     []*h2grpc.Conn // replaced connections, closed at the end (they may still drain)
	lastTry time.Time
}

// DialH2 opens n h2grpc connections to addr.
func DialH2(ctx context.Context, addr string, n int) ([]*H2Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var slots []*H2Conn
	for range n {
		c, err := h2grpc.Dial(ctx, addr)
		if err != nil {
			CloseH2(slots)
			return nil, fmt.Errorf("connecting to %s: %w", addr, err)
		}
		s := &H2Conn{addr: addr}
		s.c.Store(c)
		slots = append(slots, s)
	}
	return slots, nil
}

// CloseH2 closes the connections (and those they replaced).
func CloseH2(slots []*H2Conn) {
	for _, s := range slots {
		s.mu.Lock()
		for _, c := range s.old {
			c.Close()
		}
		s.old = nil
		s.mu.Unlock()
		s.c.Load().Close()
	}
}

// redial replaces old if it is still the slot's connection; at most one
// attempt per 100 ms, so a dead server is not hammered with dials.
func (s *H2Conn) redial(ctx context.Context, old *h2grpc.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c.Load() != old || time.Since(s.lastTry) < 100*time.Millisecond {
		return
	}
	s.lastTry = time.Now()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := h2grpc.Dial(ctx, s.addr)
	if err != nil {
		return
	}
	s.old = append(s.old, old)
	s.c.Store(c)
}

// invoke sends one serialized request on the slot's connection.
func (s *H2Conn) invoke(ctx context.Context, req, out []byte) ([]byte, error) {
	c := s.c.Load()
	out, err := c.AppendInvoke(ctx, shouldRateLimit, req, out)
	if err != nil && status.Code(err) == codes.Unavailable && !c.Usable() {
		s.redial(ctx, c)
	}
	return out, err
}

// appendValue appends the descriptor value of key k, descriptor d (the
// format of Load.value).
func (l *Load) appendValue(b []byte, k uint64, d int) []byte {
	b = append(b, l.opt.RunID...)
	b = append(b, '-')
	b = strconv.AppendUint(b, k, 10)
	if d > 0 {
		b = append(b, "-d"...)
		b = strconv.AppendInt(b, int64(d), 10)
	}
	return b
}

// appendRequest appends the wire form of
//
//	RateLimitRequest{domain: Domain, hits_addend: 1,
//	  descriptors: [{entries: [{key: Key, value: value(k, d)}]} for d < Descriptors]}
//
// written by hand with protowire: it is what proto.Marshal produces for
// that message (TestAppendRequest checks it), without building the message.
func (l *Load) appendRequest(b []byte, k uint64) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType) // domain
	b = protowire.AppendString(b, l.opt.Domain)
	var v [64]byte
	for d := range l.opt.Descriptors {
		val := l.appendValue(v[:0], k, d)
		// Entry{key = 1, value = 2}
		entry := protowire.SizeTag(1) + protowire.SizeBytes(len(l.opt.Key)) + protowire.SizeTag(2) + protowire.SizeBytes(len(val))
		// RateLimitDescriptor{entries = 1}
		desc := protowire.SizeTag(1) + protowire.SizeBytes(entry)
		b = protowire.AppendTag(b, 2, protowire.BytesType) // descriptors
		b = protowire.AppendVarint(b, uint64(desc))
		b = protowire.AppendTag(b, 1, protowire.BytesType) // entries
		b = protowire.AppendVarint(b, uint64(entry))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, l.opt.Key)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, val)
	}
	b = protowire.AppendTag(b, 3, protowire.VarintType) // hits_addend
	return protowire.AppendVarint(b, 1)
}

// overallCode reads RateLimitResponse.overall_code (field 1) from its wire
// form, skipping every other field; the last occurrence wins, as in proto.
func overallCode(b []byte) (rlspb.RateLimitResponse_Code, error) {
	var code uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, fmt.Errorf("bad RateLimitResponse: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, fmt.Errorf("bad RateLimitResponse: %w", protowire.ParseError(m))
			}
			code, b = v, b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, fmt.Errorf("bad RateLimitResponse: %w", protowire.ParseError(m))
		}
		b = b[m:]
	}
	return rlspb.RateLimitResponse_Code(int32(code)), nil
}
