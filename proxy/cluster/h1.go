package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"
)

// h1Transport is an HTTP/1.1 client with a keep-alive pool that runs each
// request entirely on the caller's goroutine: no writer/reader goroutines and
// channel hand-offs per request, the main per-request cost of
// net/http.Transport after syscalls. Upgrades and HTTP/2 use net/http.
type h1Transport struct {
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	idleFor time.Duration
	maxIdle int

	mu   sync.Mutex
	idle map[string][]*h1Conn
}

type h1Conn struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	addr     string
	lastUsed time.Time
}

func newH1Transport(dial func(ctx context.Context, network, addr string) (net.Conn, error), idle time.Duration) *h1Transport {
	return &h1Transport{dial: dial, idleFor: idle, maxIdle: 4096, idle: map[string][]*h1Conn{}}
}

func (t *h1Transport) get(ctx context.Context, addr string) (*h1Conn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for {
		l := t.idle[addr]
		if len(l) == 0 {
			break
		}
		pc := l[len(l)-1]
		l[len(l)-1] = nil
		t.idle[addr] = l[:len(l)-1]
		if now.Sub(pc.lastUsed) > t.idleFor {
			t.mu.Unlock()
			pc.c.Close()
			t.mu.Lock()
			continue
		}
		t.mu.Unlock()
		return pc, true, nil
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10), addr: addr}, false, nil
}

func (t *h1Transport) put(pc *h1Conn) {
	pc.lastUsed = time.Now()
	t.mu.Lock()
	if l := t.idle[pc.addr]; len(l) < t.maxIdle {
		t.idle[pc.addr] = append(l, pc)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	pc.c.Close()
}

// CloseIdleConnections closes every pooled connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	t.mu.Unlock()
	for _, l := range idle {
		for _, pc := range l {
			pc.c.Close()
		}
	}
}

var errStale = errors.New("reused connection closed before the response")

// RoundTrip sends req (absolute URL with host:port) and returns the
// response; the body must be read to EOF or closed.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		// A cancelled context (route or per-try timeout, client gone)
		// unblocks the conn's reads and writes at once.
		stop := context.AfterFunc(ctx, func() { pc.c.SetDeadline(time.Unix(1, 0)) })
		res, err := t.exchange(pc, req)
		if err == nil {
			res.Body = &h1Body{rc: res.Body, pc: pc, t: t, stop: stop, keep: !res.Close && !req.Close}
			return res, nil
		}
		stop()
		pc.c.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A keep-alive connection the server closed while idle: try a fresh
		// one when the request can be sent again.
		if errors.Is(err, errStale) && reused && attempt < 2 && idempotent(req.Method) && (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil) {
			if req.GetBody != nil {
				if req.Body, err = req.GetBody(); err != nil {
					return nil, err
				}
			}
			continue
		}
		return nil, err
	}
}

func (t *h1Transport) exchange(pc *h1Conn, req *http.Request) (*http.Response, error) {
	if err := writeRequest(pc.bw, req); err != nil {
		return nil, fmt.Errorf("%w: write: %v", errStale, err)
	}
	if _, err := pc.br.Peek(1); err != nil {
		return nil, fmt.Errorf("%w: %v", errStale, err)
	}
	for {
		res, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if res.StatusCode >= 100 && res.StatusCode < 200 && res.StatusCode != http.StatusSwitchingProtocols {
			continue // 100 Continue and friends: the real response follows
		}
		return res, nil
	}
}

// writeRequest writes an HTTP/1.1 request without sorting or cloning headers.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	for k, vs := range req.Header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	switch {
	case hasBody && req.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.Copy(cw, req.Body); err != nil {
			return err
		}
		cw.Close()
		bw.WriteString("\r\n")
	case hasBody || req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(req.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
		if hasBody {
			n, err := io.Copy(bw, req.Body)
			if err != nil {
				return err
			}
			if n != req.ContentLength {
				return fmt.Errorf("request body: %d bytes, Content-Length %d", n, req.ContentLength)
			}
		}
	default:
		if req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH" {
			bw.WriteString("Content-Length: 0\r\n")
		}
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

// h1Body returns the connection to the pool once the body was read to EOF.
type h1Body struct {
	rc   io.ReadCloser
	pc   *h1Conn
	t    *h1Transport
	stop func() bool
	keep bool
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false) // body not consumed: the connection cannot be reused
	}
	return nil
}

func (b *h1Body) finish(eof bool) {
	b.done = true
	b.rc.Close()
	fired := !b.stop()
	if eof && b.keep && !fired && b.pc.br.Buffered() == 0 {
		b.t.put(b.pc)
		return
	}
	b.pc.c.Close()
}

// idempotent methods may be re-sent on a fresh connection (RFC 9110 §9.2.2),
// as net/http.Transport does.
func idempotent(m string) bool {
	switch m {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
