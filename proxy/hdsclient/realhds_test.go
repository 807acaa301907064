package hdsclient

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/replica"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// TestAgainstRealHDSReplica runs the client against the project's own HDS
// replica in-process: the replica assigns the endpoints to this proxy, the
// client probes the real upstreams, and the replica's verdicts follow.
func TestAgainstRealHDSReplica(t *testing.T) {
	up := newApp(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	upHost, upPort := hostPort(t, upAddr)
	deadHost, deadPort := hostPort(t, deadAddr(t))

	hc, _, err := catalog.NormalizeHealthCheck(&corev3.HealthCheck{
		Interval: durationpb.New(100 * time.Millisecond), Timeout: durationpb.New(time.Second),
		UnhealthyThreshold: wrapperspb.UInt32(2), HealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	web := catalog.Cluster{Name: "web", HealthCheck: hc, Protocol: catalog.HTTP, Endpoints: []catalog.Endpoint{
		{Key: catalog.EndpointKey{Cluster: "web", Address: upHost, Port: upPort}, Locality: &corev3.Locality{Zone: "zone-a"}},
		{Key: catalog.EndpointKey{Cluster: "web", Address: deadHost, Port: deadPort}, Locality: &corev3.Locality{Zone: "zone-a"}},
	}}
	snap := &catalog.Snapshot{Version: "t", Clusters: []catalog.Cluster{web}}
	snap.Sort()

	rep, err := replica.New(replica.Config{K: 1, ReportInterval: 200 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
		Ring: ring.Config{Name: "hds-1", BindAddr: "127.0.0.1", Label: "hdsclient-" + t.Name(), Timings: ring.FastTimings()}})
	if err != nil {
		t.Fatal(err)
	}
	rep.SetCatalog(snap)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	server.Register(gs, rep, rep)
	go gs.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; gs.Stop() }()

	c, stop := runClient(t, ln.Addr().String())
	defer stop()

	verdicts := func() map[catalog.EndpointKey]verdict.Verdict {
		snapshot, _, cancelWatch := rep.Watch("test", nil)
		defer cancelWatch()
		out := map[catalog.EndpointKey]verdict.Verdict{}
		for _, v := range snapshot {
			out[v.Key] = v.Verdict
		}
		return out
	}
	upKey, deadKey := web.Endpoints[0].Key, web.Endpoints[1].Key
	if web.Endpoints[0].Key.Port != upPort {
		upKey, deadKey = deadKey, upKey // Sort may reorder
	}
	waitFor(t, "replica verdicts up/dead from our probes", func() bool {
		v := verdicts()
		return v[upKey] == verdict.Up && v[deadKey] == verdict.Dead
	})
	if st := c.Status(); len(st.Clusters) != 1 || len(st.Clusters[0].Hosts) != 2 || up.probes.Load() == 0 {
		t.Fatalf("client status: %+v probes=%d", st, up.probes.Load())
	}
	up.status.Store(503)
	waitFor(t, "verdict follows the upstream failing", func() bool { return verdicts()[upKey] == verdict.Dead })
	up.status.Store(200)
	waitFor(t, "verdict follows the upstream recovering", func() bool { return verdicts()[upKey] == verdict.Up })
}
