package server_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

// panicWatch is a slog handler that counts net/http's "panic serving" lines.
type panicWatch struct{ n atomic.Int64 }

func (p *panicWatch) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		p.n.Add(1)
	}
	return nil
}
func (p *panicWatch) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *panicWatch) WithGroup(string) slog.Handler      { return p }

// FuzzHTTP1Request sends arbitrary bytes to a live proxy listener: malformed
// requests must get a 4xx/5xx from the proxy itself (or a closed connection),
// valid ones a response, and nothing may panic.
func FuzzHTTP1Request(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-User: t\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
		"GET  HTTP/1.1\r\n\r\n",
		"\x00\x01\x02\r\n\r\n",
		"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	up := startUpstreamF(f)
	port := freePortF(f)
	pw := &panicWatch{}
	px := server.New(server.Options{Log: slog.New(pw), Metrics: stats.New(nil), DrainTimeout: time.Second})
	r := xds.NewResources()
	l := mt.Listener("fuzz", port, "r")
	r.Listeners = map[string]*listenerv3.Listener{"fuzz": l}
	r.Routes = map[string]*routev3.RouteConfiguration{"r": mt.RouteConfig("r", mt.RouteTo("/", "svc"))}
	c := mt.StaticCluster("svc", mt.EP{Port: up})
	r.Clusters = map[string]*clusterv3.Cluster{"svc": c}
	if err := px.Apply(context.Background(), r); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Shutdown(ctx)
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write(in)
		conn.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(conn)
		_, perr := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		h2 := bytes.HasPrefix(in, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) // h2c prior knowledge: frames, not HTTP/1
		if len(out) > 0 && !h2 {
			res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
			if err != nil {
				t.Fatalf("proxy wrote a malformed response %q: %v", out, err)
			}
			if perr != nil && res.StatusCode < 400 {
				t.Fatalf("malformed request %q got %d", in, res.StatusCode)
			}
		}
		if pw.n.Load() != 0 {
			t.Fatalf("the proxy panicked on %q", in)
		}
	})
}

func startUpstreamF(f *testing.F) uint32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Close() })
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func freePortF(f *testing.F) uint32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}
