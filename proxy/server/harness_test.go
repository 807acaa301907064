package server_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
	"github.com/sidemesh/sidemesh/proxy/server"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

// runProxy starts an in-process proxy following cp.
func runProxy(t *testing.T, c *mt.CP, sotw bool) (*server.Proxy, *xds.Client) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	px := server.New(server.Options{Log: log, Metrics: stats.New(nil), DrainTimeout: 3 * time.Second})
	xc := xds.New(xds.Config{Addr: c.Addr, Node: &corev3.Node{Id: "test-node", Cluster: "test"}, SotW: sotw,
		Log: log, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}, px)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { xc.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, c2 := context.WithTimeout(context.Background(), 5*time.Second)
		defer c2()
		px.Shutdown(sctx)
	})
	return px, xc
}
