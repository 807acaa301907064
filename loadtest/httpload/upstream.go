package httpload

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/internal/lifecycle"
)

var hello = []byte("hello, world\n")

// Upstream is the tiny built-in HTTP server for proxy benchmarks: 13 bytes
// for any path over HTTP/1.1 or h2c, like the upstream of the proxy study.
type Upstream struct {
	Delay    time.Duration   // optional service time per request
	Requests [3]atomic.Int64 // by protocol major version (index 1 and 2)
}

// ServeHTTP implements http.Handler.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 || r.ProtoMajor == 2 {
		u.Requests[r.ProtoMajor].Add(1)
	}
	if u.Delay > 0 {
		t := time.NewTimer(u.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{strconv.Itoa(len(hello))}
	w.Write(hello)
}

// NewServer returns an http.Server for h that speaks HTTP/1.1 and h2c
// (prior knowledge) on one port.
func NewServer(h http.Handler) *http.Server {
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	s.Protocols = new(http.Protocols)
	s.Protocols.SetHTTP1(true)
	s.Protocols.SetUnencryptedHTTP2(true)
	return s
}

// UpstreamSpec is the `loadtest upstream` subcommand.
func UpstreamSpec() app.Spec {
	return app.Spec{
		Name: "loadtest upstream", EnvPrefix: "LOADTEST_UPSTREAM",
		Summary:   "tiny HTTP/1.1 + h2c upstream answering 13 bytes to any path, for proxy benchmarks",
		AdminAddr: "127.0.0.1:0",
		Flags: func(fs *pflag.FlagSet) {
			fs.String("addr", "127.0.0.1:18099", "HTTP listen address")
			fs.Duration("delay", 0, "service time added to every request")
		},
		Run: func(ctx context.Context, env *app.Env) error {
			addr, _ := env.Flags.GetString("addr")
			u := &Upstream{}
			u.Delay, _ = env.Flags.GetDuration("delay")
			if u.Delay < 0 {
				return app.Usagef("--delay must not be negative")
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return app.Usagef("--addr %s: %v", addr, err)
			}
			env.Admin.Registry().MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "loadtest_upstream_requests_total", Help: "Requests served by the built-in upstream.",
			}, func() float64 { return float64(u.Requests[1].Load() + u.Requests[2].Load()) }))
			env.Log.Info("upstream listening", "addr", ln.Addr().String())
			fmt.Fprintln(env.Stdout, ln.Addr().String())
			return env.Serve(lifecycle.HTTP("upstream", NewServer(u), ln))
		},
	}
}
