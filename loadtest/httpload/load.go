// Package httpload drives HTTP/1.1 or h2c load through a proxy (or
// directly) and hosts the built-in upstream.
package httpload

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Options describe an HTTP load.
type Options struct {
	URL      string
	Method   string
	Headers  http.Header
	Body     []byte
	H2C      bool
	Conns    int // connections (h2c: streams are multiplexed over them)
	Workers  int
	Timeout  time.Duration
	HostName string // Host header override
}

// Load is a prepared HTTP load.
type Load struct {
	opt     Options
	clients []*http.Client
}

// New builds the transports. HTTP/1.1 uses one transport capped at Conns
// connections; h2c uses Conns transports of one connection each.
func New(opt Options) *Load {
	l := &Load{opt: opt}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	mk := func(maxConns int) *http.Client {
		t := &http.Transport{
			DialContext:         dialer.DialContext,
			MaxConnsPerHost:     maxConns,
			MaxIdleConnsPerHost: maxConns,
			MaxIdleConns:        maxConns,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		}
		t.Protocols = new(http.Protocols)
		if opt.H2C {
			t.Protocols.SetUnencryptedHTTP2(true)
		} else {
			t.Protocols.SetHTTP1(true)
		}
		return &http.Client{Transport: t, Timeout: opt.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if opt.H2C {
		for range opt.Conns {
			l.clients = append(l.clients, mk(1))
		}
	} else {
		l.clients = []*http.Client{mk(opt.Conns)}
	}
	return l
}

// Close drops idle connections.
func (l *Load) Close() {
	for _, c := range l.clients {
		c.CloseIdleConnections()
	}
}

// Op is the runner operation: one request, body read to the end. The
// outcome is the status code.
func (l *Load) Op(ctx context.Context, worker int, _ uint64) (string, error) {
	var body io.Reader
	if l.opt.Body != nil {
		body = bytes.NewReader(l.opt.Body)
	}
	req, err := http.NewRequestWithContext(ctx, l.opt.Method, l.opt.URL, body)
	if err != nil {
		return "", err
	}
	for k, v := range l.opt.Headers {
		req.Header[k] = v
	}
	if l.opt.HostName != "" {
		req.Host = l.opt.HostName
	}
	resp, err := l.clients[worker%len(l.clients)].Do(req)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", fmt.Errorf("reading body: %w", err)
	}
	if l.opt.H2C && resp.ProtoMajor != 2 {
		return "", fmt.Errorf("asked for h2c, got %s", resp.Proto)
	}
	return strconv.Itoa(resp.StatusCode), nil
}

// ParseHeader parses one --header "Name: value".
func ParseHeader(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, ":")
	k = strings.TrimSpace(k)
	if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") || strings.ContainsAny(v, "\r\n") {
		return "", "", fmt.Errorf("--header %q: want \"Name: value\"", s)
	}
	return http.CanonicalHeaderKey(k), strings.TrimSpace(v), nil
}
