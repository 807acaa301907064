package healthfeed

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/controlplane/healthfeed/feedtest"
	"github.com/sidemesh/sidemesh/controlplane/translate"
	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

var eh = feedtest.Endpoint

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestSubscriberFailoverAndUpdates(t *testing.T) {
	k1 := translate.EndpointKey{Cluster: "web", Address: "10.0.0.1", Port: 80}
	k2 := translate.EndpointKey{Cluster: "web", Address: "10.0.0.2", Port: 80}
	feed := feedtest.Start(t, "127.0.0.1:0", &healthfeedv1.HealthUpdate{Full: true, Replica: "hds-2", Endpoints: []*healthfeedv1.EndpointHealth{
		eh("web", "10.0.0.1", 80, healthfeedv1.Verdict_VERDICT_UNHEALTHY),
		eh("web", "10.0.0.2", 80, healthfeedv1.Verdict_VERDICT_HEALTHY),
	}})
	changes := make(chan translate.Health, 16)
	s := &Subscriber{
		Addrs: []string{deadAddr(t), feed.Addr}, Name: "test", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnChange: func(h translate.Health) { changes <- h }, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	s.RegisterMetrics(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	next := func() translate.Health {
		t.Helper()
		select {
		case h := <-changes:
			return h
		case <-time.After(30 * time.Second):
			t.Fatal("no health change")
			return nil
		}
	}
	h := next()
	if h[k1] != corev3.HealthStatus_UNHEALTHY || h[k2] != corev3.HealthStatus_HEALTHY {
		t.Fatalf("full snapshot: %v", h)
	}
	if s.Connected() != feed.Addr {
		t.Errorf("connected to %q, want the live replica %s", s.Connected(), feed.Addr)
	}
	feed.Updates <- &healthfeedv1.HealthUpdate{Endpoints: []*healthfeedv1.EndpointHealth{eh("web", "10.0.0.1", 80, healthfeedv1.Verdict_VERDICT_HEALTHY)}}
	if h := next(); h[k1] != corev3.HealthStatus_HEALTHY || h[k2] != corev3.HealthStatus_HEALTHY {
		t.Fatalf("incremental: %v", h)
	}
	feed.Updates <- &healthfeedv1.HealthUpdate{Removed: []*healthfeedv1.EndpointKey{{Cluster: "web", Address: "10.0.0.2", Port: 80}}}
	if h := next(); len(h) != 1 {
		t.Fatalf("after removal: %v", h)
	}

	// The replica dies; another comes up on the same address with a new
	// full view, which replaces the old one entirely.
	addr := feed.Addr
	feed.Stop()
	feed2 := feedtest.Start(t, addr, &healthfeedv1.HealthUpdate{Full: true, Endpoints: []*healthfeedv1.EndpointHealth{
		eh("web", "10.0.0.2", 80, healthfeedv1.Verdict_VERDICT_UNHEALTHY),
	}})
	_ = feed2
	h = next()
	if len(h) != 1 || h[k2] != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("after reconnect: %v", h)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
