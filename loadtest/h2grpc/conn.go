// Package h2grpc is a minimal unary gRPC client over cleartext HTTP/2 (h2c,
// prior knowledge), made for load generation.
//
// Why it exists: on a small box the load generator competes with the server
// it measures. A grpc-go ClientConn hands every call to its transport's
// writer goroutine (loopy) and back, and allocates per call for the stream,
// the metadata and the codec; in open loop that costs about as much CPU per
// call as the server itself. This client does the least a unary call needs:
//
//   - The caller writes its own HEADERS and DATA frames into the connection's
//     write queue under a mutex. Whoever finds no write in progress becomes
//     the writer and flushes everything queued, its own frames and those
//     queued meanwhile (write combining); there is no writer goroutine and
//     no hand-off when the connection is not contended.
//   - The request's constant header fields are indexed in the server's HPACK
//     table after the first call (six bytes per call), plus a grpc-timeout
//     literal (a literal block per call measured up to 10 % more CPU per
//     call in a grpc-go server, which decodes each literal into a string).
//   - One reader goroutine per connection reads frames and completes calls
//     through a 1-buffered channel in a pooled call struct.
//   - Messages are bytes: the caller marshals and unmarshals.
//
// It still speaks HTTP/2 properly: SETTINGS (and their ACK),
// MAX_CONCURRENT_STREAMS (callers beyond it wait), MAX_FRAME_SIZE, PING ACK,
// receive flow control (WINDOW_UPDATE as DATA is consumed), send flow control
// for request DATA, RST_STREAM, GOAWAY, CONTINUATION, trailers-only responses
// and cancellation (RST_STREAM CANCEL). Errors are google.golang.org/grpc/status
// errors, so callers read codes as with grpc-go.
//
// Not supported: TLS, compression (a compressed response is an Internal
// error), metadata, streaming calls. A connection that got GOAWAY or used up
// its stream ids (2^31) refuses further calls with codes.Unavailable; the
// caller redials.
package h2grpc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// defaultStreamWindow is HTTP/2's default: unary answers are small, and
	// a bigger answer only costs WINDOW_UPDATEs.
	defaultStreamWindow = 65535
	// defaultConnWindow is opened at start so that many concurrent answers
	// never wait on the connection window.
	defaultConnWindow = 16 << 20
	defaultMaxRecvMsg = 4 << 20 // grpc-go's default
	maxStreamID       = 1<<31 - 1
)

// Option configures Dial.
type Option func(*options)

type options struct {
	streamWindow, connWindow uint32
	maxRecvMsg               int
	authority                string
}

// WithWindows sets the receive windows advertised to the server: per stream
// (SETTINGS_INITIAL_WINDOW_SIZE) and for the connection. Small windows make
// the server wait for WINDOW_UPDATEs (tests use that).
func WithWindows(stream, conn uint32) Option {
	return func(o *options) { o.streamWindow, o.connWindow = stream, conn }
}

// WithMaxRecvMsgSize bounds a response message (default 4 MiB, as grpc-go).
func WithMaxRecvMsgSize(n int) Option { return func(o *options) { o.maxRecvMsg = n } }

// WithAuthority sets :authority (default: the dialled address).
func WithAuthority(a string) Option { return func(o *options) { o.authority = a } }

// Conn is one HTTP/2 connection carrying unary gRPC calls. Safe for
// concurrent use.
type Conn struct {
	nc   net.Conn
	opt  options
	rfr  *http2.Framer // reader goroutine only
	done chan struct{} // closed when the reader has exited

	mu      sync.Mutex
	wfr     *http2.Framer // writes frames into wq; used under mu
	wq      []byte        // frames queued for the wire
	spare   []byte        // the other write buffer (swapped with wq on flush)
	writing bool          // a goroutine is flushing wq
	err     error         // connection failed or closed: every call fails with it
	goaway  error         // set by GOAWAY or id exhaustion: new calls refused
	pings   int           // PINGs received (tests)

	calls      map[uint32]*call
	nextID     uint32
	maxStreams uint32
	slotFreed  chan struct{} // closed and replaced when a stream slot may have freed
	blocked    []*call       // calls with request DATA waiting for send window

	maxFrame     uint32 // peer's SETTINGS_MAX_FRAME_SIZE
	peerInitWin  int32  // peer's SETTINGS_INITIAL_WINDOW_SIZE (our send window per stream)
	connSendWin  int64
	connUnacked  uint32         // DATA bytes received but not yet returned with WINDOW_UPDATE
	henc         *hpack.Encoder // request headers; its dynamic table follows the wire order (used under mu)
	hbuf         bytes.Buffer   // henc's output
	gotSettings  chan struct{}
	settingsSeen bool
}

// call is one unary call in flight; pooled.
type call struct {
	id      uint32
	done    chan struct{} // 1-buffered: the reader (or failure) completes the call once
	out     []byte        // gRPC-framed request; out[sent:] not yet sent
	sent    int
	sendWin int64
	unacked uint32 // stream DATA received but not yet returned with WINDOW_UPDATE
	gotHdr  bool
	body    []byte
	err     error
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// Dial connects to addr (host:port), sends the client preface and SETTINGS,
// and returns once the server's SETTINGS arrived.
func Dial(ctx context.Context, addr string, opts ...Option) (*Conn, error) {
	o := options{streamWindow: defaultStreamWindow, connWindow: defaultConnWindow, maxRecvMsg: defaultMaxRecvMsg, authority: addr}
	for _, f := range opts {
		f(&o)
	}
	if o.streamWindow == 0 || o.streamWindow > maxStreamID || o.connWindow < defaultStreamWindow || o.connWindow > maxStreamID {
		return nil, fmt.Errorf("h2grpc: windows %d/%d out of range", o.streamWindow, o.connWindow)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "h2grpc: dial %s: %v", addr, err)
	}
	c := &Conn{
		nc: nc, opt: o, done: make(chan struct{}),
		calls: map[uint32]*call{}, nextID: 1, maxStreams: 100, slotFreed: make(chan struct{}),
		maxFrame: 16384, peerInitWin: defaultStreamWindow, connSendWin: defaultStreamWindow,
		gotSettings: make(chan struct{}),
	}
	c.rfr = http2.NewFramer(nil, bufio.NewReaderSize(nc, 32<<10))
	c.rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.rfr.MaxHeaderListSize = 1 << 20
	c.rfr.SetReuseFrames()
	c.wfr = http2.NewFramer(queueWriter{c}, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)

	c.mu.Lock()
	c.wq = append(c.wq, http2.ClientPreface...)
	c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: o.streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 1 << 20},
	)
	if o.connWindow > defaultStreamWindow {
		c.wfr.WriteWindowUpdate(0, o.connWindow-defaultStreamWindow)
	}
	c.flushLocked()
	c.mu.Unlock()
	go c.readLoop()

	select {
	case <-c.gotSettings:
		return c, nil
	case <-c.done:
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		return nil, err
	case <-ctx.Done():
		c.Close()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// Close closes the connection; calls in flight fail with Unavailable.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.failLocked(status.Error(codes.Unavailable, "h2grpc: connection closed"))
	c.mu.Unlock()
	<-c.done
	return nil
}

// queueWriter lets the write Framer append frames to the write queue; it is
// only used with c.mu held.
type queueWriter struct{ c *Conn }

func (w queueWriter) Write(p []byte) (int, error) {
	w.c.wq = append(w.c.wq, p...)
	return len(p), nil
}

// flushLocked writes the queue unless another goroutine is already doing it
// (that one will also write what we queued). It drops mu while writing.
// The writer waits until the kernel has taken the bytes, whatever its
// context says: against a server that stops reading, the connection (and
// that caller) stalls until the server reads again or the socket fails.
// For a load generator on loopback that is the right trade for not having
// a writer goroutine.
func (c *Conn) flushLocked() {
	if c.writing {
		return
	}
	c.writing = true
	for len(c.wq) > 0 && c.err == nil {
		buf := c.wq
		c.wq = c.spare[:0]
		c.mu.Unlock()
		_, err := c.nc.Write(buf)
		c.mu.Lock()
		c.spare = buf[:0]
		if err != nil {
			c.failLocked(status.Errorf(codes.Unavailable, "h2grpc: write: %v", err))
		}
	}
	c.writing = false
}

// failLocked marks the connection failed: the socket closes, the reader
// exits and fails every call left (readLoop's exit path).
func (c *Conn) failLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	c.nc.Close()
	c.wakeLocked()
}

func (c *Conn) wakeLocked() {
	close(c.slotFreed)
	c.slotFreed = make(chan struct{})
}

// Invoke calls method path (e.g. "/pkg.Service/Method") with a serialized
// request and returns the serialized response.
func (c *Conn) Invoke(ctx context.Context, path string, req []byte) ([]byte, error) {
	return c.AppendInvoke(ctx, path, req, nil)
}

// AppendInvoke is Invoke appending the response to dst, so that a caller
// reusing dst allocates nothing per call.
func (c *Conn) AppendInvoke(ctx context.Context, path string, req, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, status.FromContextError(err).Err()
	}
	var timeout time.Duration
	dl, hasDL := ctx.Deadline()
	if hasDL {
		if timeout = time.Until(dl); timeout <= 0 {
			return dst, status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
		}
	}
	cl := callPool.Get().(*call)
	cl.out = append(cl.out[:0], 0, byte(len(req)>>24), byte(len(req)>>16), byte(len(req)>>8), byte(len(req)))
	cl.out = append(cl.out, req...)

	c.mu.Lock()
	for {
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			callPool.Put(cl)
			return dst, err
		}
		if c.goaway != nil {
			err := c.goaway
			c.mu.Unlock()
			callPool.Put(cl)
			return dst, err
		}
		if uint32(len(c.calls)) < c.maxStreams {
			break
		}
		// MAX_CONCURRENT_STREAMS reached: wait for a slot (rare; a broadcast
		// is simplest and correct when the limit changes too).
		ch := c.slotFreed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			callPool.Put(cl)
			return dst, status.FromContextError(ctx.Err()).Err()
		}
		c.mu.Lock()
	}
	cl.id = c.nextID
	c.nextID += 2
	if c.nextID > maxStreamID {
		// The last id of this connection: later calls must redial.
		c.goaway = status.Error(codes.Unavailable, "h2grpc: stream ids exhausted; redial")
	}
	cl.sent, cl.unacked, cl.gotHdr, cl.body, cl.err = 0, 0, false, cl.body[:0], nil
	cl.sendWin = int64(c.peerInitWin)
	c.calls[cl.id] = cl
	c.writeHeadersLocked(cl.id, path, hasDL, timeout)
	if !c.sendDataLocked(cl) {
		c.blocked = append(c.blocked, cl)
	}
	c.flushLocked()
	c.mu.Unlock()

	select {
	case <-cl.done:
	case <-ctx.Done():
		c.mu.Lock()
		if c.calls[cl.id] == cl {
			// Still ours: tell the server to stop and free the slot.
			c.removeLocked(cl)
			if c.err == nil {
				c.wfr.WriteRSTStream(cl.id, http2.ErrCodeCancel)
				c.flushLocked()
			}
			c.mu.Unlock()
			callPool.Put(cl)
			return dst, status.FromContextError(ctx.Err()).Err()
		}
		c.mu.Unlock()
		<-cl.done // completed meanwhile: take its result
	}
	err := cl.err
	if err == nil {
		dst, err = c.message(cl.body, dst)
	}
	cl.err = nil
	if cap(cl.body) > 64<<10 {
		cl.body = nil // do not pin big answers in the pool
	}
	if cap(cl.out) > 64<<10 {
		cl.out = nil
	}
	callPool.Put(cl)
	return dst, err
}

// message extracts the single gRPC message of a unary response body.
func (c *Conn) message(body, dst []byte) ([]byte, error) {
	if len(body) < 5 {
		return dst, status.Error(codes.Internal, "h2grpc: OK status without a response message")
	}
	if body[0] != 0 {
		return dst, status.Errorf(codes.Internal, "h2grpc: compressed response (flag %d) not supported", body[0])
	}
	n := int(uint32(body[1])<<24 | uint32(body[2])<<16 | uint32(body[3])<<8 | uint32(body[4]))
	if len(body)-5 != n {
		return dst, status.Errorf(codes.Internal, "h2grpc: response body %d bytes, message says %d (unary wants exactly one message)", len(body)-5, n)
	}
	return append(dst, body[5:]...), nil
}

// writeHeadersLocked queues the request HEADERS (and CONTINUATIONs if the
// block exceeds the peer's frame size).
func (c *Conn) writeHeadersLocked(id uint32, path string, hasDL bool, timeout time.Duration) {
	b := c.headerBlockLocked(path, hasDL, timeout)
	max := int(c.maxFrame)
	first := b
	if len(first) > max {
		first = b[:max]
	}
	c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(first) == len(b)})
	for rest := b[len(first):]; len(rest) > 0; {
		n := min(len(rest), max)
		c.wfr.WriteContinuation(id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
}

// headerBlockLocked encodes a request's header block.
func (c *Conn) headerBlockLocked(path string, hasDL bool, timeout time.Duration) []byte {
	// The constant fields go through the encoder with incremental indexing:
	// from the second call on each is one byte referring to the server's
	// dynamic table, which is also cheapest for the server to decode (a
	// literal costs it a string allocation per field and call). The ever
	// changing grpc-timeout is a literal without indexing, so it never
	// evicts them.
	c.hbuf.Reset()
	for _, f := range [...]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
		{Name: ":authority", Value: c.opt.authority}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		c.henc.WriteField(f)
	}
	b := c.hbuf.Bytes()
	if hasDL {
		b = appendTimeoutField(b, timeout)
	}
	return b
}

// sendDataLocked queues as much request DATA as the peer's frame size and
// send windows allow; it reports whether all was sent (END_STREAM queued).
func (c *Conn) sendDataLocked(cl *call) bool {
	for cl.sent < len(cl.out) {
		n := min(int64(len(cl.out)-cl.sent), int64(c.maxFrame), cl.sendWin, c.connSendWin)
		if n <= 0 {
			return false
		}
		end := cl.sent+int(n) == len(cl.out)
		c.wfr.WriteData(cl.id, end, cl.out[cl.sent:cl.sent+int(n)])
		cl.sent += int(n)
		cl.sendWin -= n
		c.connSendWin -= n
	}
	return true
}

// resumeLocked sends DATA of calls that waited for send window.
func (c *Conn) resumeLocked() {
	kept := c.blocked[:0]
	for _, cl := range c.blocked {
		if !c.sendDataLocked(cl) {
			kept = append(kept, cl)
		}
	}
	clear(c.blocked[len(kept):])
	c.blocked = kept
}

// removeLocked forgets a call (finished or cancelled) and frees its slot.
func (c *Conn) removeLocked(cl *call) {
	delete(c.calls, cl.id)
	if i := slices.Index(c.blocked, cl); i >= 0 {
		c.blocked = slices.Delete(c.blocked, i, i+1)
	}
	c.wakeIfWaitingLocked()
}

// wakeIfWaitingLocked wakes slot waiters only when the limit was reached:
// replacing the channel on every completion would cost an allocation per call.
func (c *Conn) wakeIfWaitingLocked() {
	if uint32(len(c.calls))+1 >= c.maxStreams {
		c.wakeLocked()
	}
}

// finishLocked completes a call with err (nil: body holds the answer).
func (c *Conn) finishLocked(cl *call, err error) {
	c.removeLocked(cl)
	cl.err = err
	cl.done <- struct{}{}
}

// rstLocked completes a call with err and resets the stream.
func (c *Conn) rstLocked(cl *call, code http2.ErrCode, err error) {
	c.finishLocked(cl, err)
	c.wfr.WriteRSTStream(cl.id, code)
}

func (c *Conn) readLoop() {
	err := c.read()
	c.mu.Lock()
	c.failLocked(err)
	for _, cl := range c.calls {
		c.finishLocked(cl, c.err)
	}
	c.mu.Unlock()
	close(c.done)
}

// read handles frames until the connection fails; it returns why.
func (c *Conn) read() error {
	for {
		f, err := c.rfr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A malformed frame on one stream (e.g. bad headers): fail
				// that call, keep the connection.
				c.mu.Lock()
				if cl := c.calls[se.StreamID]; cl != nil {
					c.rstLocked(cl, se.Code, status.Errorf(codes.Internal, "h2grpc: %v", se))
				} else {
					c.wfr.WriteRSTStream(se.StreamID, se.Code)
				}
				c.flushLocked()
				c.mu.Unlock()
				continue
			}
			if errors.Is(err, io.EOF) {
				return status.Error(codes.Unavailable, "h2grpc: connection closed by server")
			}
			return status.Errorf(codes.Unavailable, "h2grpc: read: %v", err)
		}
		c.mu.Lock()
		err = c.handleLocked(f)
		c.flushLocked()
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (c *Conn) handleLocked(f http2.Frame) error {
	if !c.settingsSeen {
		// The server preface is a SETTINGS frame.
		if _, ok := f.(*http2.SettingsFrame); !ok {
			return status.Errorf(codes.Unavailable, "h2grpc: server sent %v before SETTINGS (not HTTP/2?)", f.Header().Type)
		}
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if !c.settingsSeen {
			// RFC 9113 6.5.2: no limit unless the server sets one (Dial
			// waits for this frame, so no call ran under the interim 100).
			c.maxStreams = math.MaxUint32
		}
		if err := c.settingsLocked(f); err != nil {
			return err
		}
		c.wfr.WriteSettingsAck()
		if !c.settingsSeen {
			c.settingsSeen = true
			close(c.gotSettings)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			c.wfr.WritePing(true, f.Data)
			c.pings++
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			c.connSendWin += int64(f.Increment)
		} else if cl := c.calls[f.StreamID]; cl != nil {
			cl.sendWin += int64(f.Increment)
		}
		c.resumeLocked()
	case *http2.MetaHeadersFrame:
		if cl := c.calls[f.StreamID]; cl != nil {
			c.headersLocked(cl, f)
		}
	case *http2.DataFrame:
		c.dataLocked(f)
	case *http2.RSTStreamFrame:
		if cl := c.calls[f.StreamID]; cl != nil {
			c.finishLocked(cl, status.Errorf(rstCode(f.ErrCode), "h2grpc: stream reset by server: %v", f.ErrCode))
		}
	case *http2.GoAwayFrame:
		// Streams above LastStreamID were never processed: fail them so the
		// caller can retry elsewhere; the rest may still complete.
		msg := fmt.Sprintf("h2grpc: server sent GOAWAY (%v, %q)", f.ErrCode, f.DebugData())
		c.goaway = status.Error(codes.Unavailable, msg)
		for id, cl := range c.calls {
			if id > f.LastStreamID {
				c.finishLocked(cl, c.goaway)
			}
		}
		c.wakeLocked() // slot waiters must see the GOAWAY
	}
	return nil
}

func (c *Conn) settingsLocked(f *http2.SettingsFrame) error {
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return status.Errorf(codes.Unavailable, "h2grpc: bad SETTINGS from server: %v", err)
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = s.Val
			c.wakeLocked()
		case http2.SettingHeaderTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingMaxFrameSize:
			c.maxFrame = s.Val
		case http2.SettingInitialWindowSize:
			// The change applies to every open stream's send window.
			delta := int64(s.Val) - int64(c.peerInitWin)
			c.peerInitWin = int32(s.Val)
			for _, cl := range c.calls {
				cl.sendWin += delta
			}
			c.resumeLocked()
		}
		return nil
	})
}

func (c *Conn) headersLocked(cl *call, f *http2.MetaHeadersFrame) {
	if !cl.gotHdr {
		cl.gotHdr = true
		if st := f.PseudoValue("status"); st != "200" {
			code, _ := strconv.Atoi(st)
			c.rstLocked(cl, http2.ErrCodeProtocol, status.Errorf(httpCode(code), "h2grpc: HTTP status %s", st))
			return
		}
		ct := ""
		for _, h := range f.RegularFields() {
			if h.Name == "content-type" {
				ct = h.Value
			}
		}
		if ct != "application/grpc" && !hasPrefix(ct, "application/grpc+") && !hasPrefix(ct, "application/grpc;") {
			c.rstLocked(cl, http2.ErrCodeProtocol, status.Errorf(codes.Unknown, "h2grpc: content-type %q is not gRPC", ct))
			return
		}
		if !f.StreamEnded() {
			return // response headers; DATA and trailers follow
		}
		// Trailers-only: the status is in this block.
	} else if !f.StreamEnded() {
		c.rstLocked(cl, http2.ErrCodeProtocol, status.Error(codes.Internal, "h2grpc: trailers without END_STREAM"))
		return
	}
	code, msg, found := codes.Unknown, "", false
	for _, h := range f.RegularFields() {
		switch h.Name {
		case "grpc-status":
			n, err := strconv.ParseUint(h.Value, 10, 32)
			if err != nil {
				c.finishLocked(cl, status.Errorf(codes.Internal, "h2grpc: bad grpc-status %q", h.Value))
				return
			}
			code, found = codes.Code(n), true
		case "grpc-message":
			msg = decodeGrpcMessage(h.Value)
		}
	}
	if !found {
		c.finishLocked(cl, status.Error(codes.Internal, "h2grpc: server closed the stream without grpc-status"))
		return
	}
	if code != codes.OK {
		c.finishLocked(cl, status.Error(code, msg))
		return
	}
	c.finishLocked(cl, nil)
}

func (c *Conn) dataLocked(f *http2.DataFrame) {
	// Flow control counts the whole frame (padding too), for known and
	// forgotten (cancelled) streams alike.
	n := f.Header().Length
	c.connUnacked += n
	if c.connUnacked >= c.opt.connWindow/2 {
		c.wfr.WriteWindowUpdate(0, c.connUnacked)
		c.connUnacked = 0
	}
	cl := c.calls[f.StreamID]
	if cl == nil {
		return
	}
	if !cl.gotHdr {
		c.rstLocked(cl, http2.ErrCodeProtocol, status.Error(codes.Internal, "h2grpc: DATA before HEADERS"))
		return
	}
	if len(cl.body)+len(f.Data()) > c.opt.maxRecvMsg+5 {
		c.rstLocked(cl, http2.ErrCodeCancel, status.Errorf(codes.ResourceExhausted, "h2grpc: response larger than %d bytes", c.opt.maxRecvMsg))
		return
	}
	cl.body = append(cl.body, f.Data()...)
	if f.StreamEnded() {
		c.finishLocked(cl, status.Error(codes.Internal, "h2grpc: server closed the stream without trailers"))
		return
	}
	// The whole answer is buffered, so the window is returned as soon as
	// half of it is used (fewer, larger updates).
	cl.unacked += n
	if cl.unacked >= c.opt.streamWindow/2 {
		c.wfr.WriteWindowUpdate(cl.id, cl.unacked)
		cl.unacked = 0
	}
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// rstCode maps an HTTP/2 RST_STREAM error code to a gRPC code as grpc-go does.
func rstCode(e http2.ErrCode) codes.Code {
	switch e {
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeEnhanceYourCalm:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// httpCode maps a non-200 HTTP status to a gRPC code (gRPC's
// http-grpc-status-mapping).
func httpCode(s int) codes.Code {
	switch s {
	case 400:
		return codes.Internal
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.Unimplemented
	case 429, 502, 503, 504:
		return codes.Unavailable
	}
	return codes.Unknown
}

// Usable reports whether new calls may succeed on c: false once it failed,
// was closed, got GOAWAY or used up its stream ids (then redial).
func (c *Conn) Usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && c.goaway == nil
}
