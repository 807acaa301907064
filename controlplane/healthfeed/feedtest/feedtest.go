// Package feedtest is a real gRPC HealthFeed server for tests: it sends a
// full snapshot first, then whatever is pushed on Updates.
package feedtest

import (
	"net"
	"testing"

	"google.golang.org/grpc"

	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

// Feed is one fake HDS replica.
type Feed struct {
	healthfeedv1.UnimplementedHealthFeedServer
	Full    *healthfeedv1.HealthUpdate
	Updates chan *healthfeedv1.HealthUpdate
	Addr    string
	srv     *grpc.Server
}

// Start serves a feed on addr ("127.0.0.1:0" for any port) until the test ends.
func Start(t testing.TB, addr string, full *healthfeedv1.HealthUpdate) *Feed {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &Feed{Full: full, Updates: make(chan *healthfeedv1.HealthUpdate, 16), Addr: ln.Addr().String(), srv: grpc.NewServer()}
	healthfeedv1.RegisterHealthFeedServer(f.srv, f)
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(f.srv.Stop)
	return f
}

// Stop kills the replica (streams end with an error).
func (f *Feed) Stop() { f.srv.Stop() }

// Watch implements HealthFeed.
func (f *Feed) Watch(_ *healthfeedv1.WatchRequest, st grpc.ServerStreamingServer[healthfeedv1.HealthUpdate]) error {
	if err := st.Send(f.Full); err != nil {
		return err
	}
	for {
		select {
		case <-st.Context().Done():
			return nil
		case u := <-f.Updates:
			if err := st.Send(u); err != nil {
				return err
			}
		}
	}
}

// Endpoint builds one verdict.
func Endpoint(cluster, addr string, port uint32, v healthfeedv1.Verdict) *healthfeedv1.EndpointHealth {
	return &healthfeedv1.EndpointHealth{Endpoint: &healthfeedv1.EndpointKey{Cluster: cluster, Address: addr, Port: port}, Verdict: v}
}
