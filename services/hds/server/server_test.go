package server

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/verdict"

	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

type fakeSession struct {
	mu      sync.Mutex
	spec    *healthv3.HealthCheckSpecifier
	calls   int
	reports int
	changed chan struct{}
	done    chan struct{}
	closed  chan struct{}
}

func (f *fakeSession) Changed() <-chan struct{} { return f.changed }
func (f *fakeSession) Done() <-chan struct{}    { return f.done }
func (f *fakeSession) Specifier() *healthv3.HealthCheckSpecifier {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.spec
}
func (f *fakeSession) Sent(*healthv3.HealthCheckSpecifier) {}
func (f *fakeSession) Report(*healthv3.EndpointHealthResponse) {
	f.mu.Lock()
	f.reports++
	f.mu.Unlock()
}
func (f *fakeSession) Close() { close(f.closed) }

type fakeHub struct {
	sess *fakeSession
	node chan *corev3.Node
}

func (h *fakeHub) Connect(n *corev3.Node, _ []healthv3.Capability_Protocol) (Session, error) {
	h.node <- n
	return h.sess, nil
}
func (h *fakeHub) Fetch(*corev3.Node) *healthv3.HealthCheckSpecifier { return h.sess.spec }

type fakeFeed struct{ ch chan FeedUpdate }

func (f *fakeFeed) Watch(string, []string) ([]EndpointVerdict, <-chan FeedUpdate, func()) {
	return []EndpointVerdict{{Key: catalog.EndpointKey{Cluster: "web", Address: "10.0.0.1", Port: 80}, Verdict: verdict.Up, Since: time.Unix(5, 0)}}, f.ch, func() {}
}
func (f *fakeFeed) ReplicaName() string { return "hds-x" }

func serve(t *testing.T, hub Hub, feed FeedSource) *grpc.ClientConn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	Register(s, hub, feed)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func spec(iv time.Duration) *healthv3.HealthCheckSpecifier {
	return &healthv3.HealthCheckSpecifier{Interval: durationpb.New(iv)}
}

// The stream sends the first specifier always, skips identical ones, and
// sends a changed one.
func TestStreamSkipsNoOpSends(t *testing.T) {
	sess := &fakeSession{spec: spec(time.Second), changed: make(chan struct{}), done: make(chan struct{}), closed: make(chan struct{})}
	hub := &fakeHub{sess: sess, node: make(chan *corev3.Node, 1)}
	cc := serve(t, hub, &fakeFeed{})
	st, err := healthv3.NewHealthDiscoveryServiceClient(cc).StreamHealthCheck(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{HealthCheckRequest: &healthv3.HealthCheckRequest{Node: &corev3.Node{Id: "p1"}}}})
	if n := <-hub.node; n.GetId() != "p1" {
		t.Fatalf("identity %q", n.GetId())
	}
	if m, err := st.Recv(); err != nil || m.GetInterval().AsDuration() != time.Second {
		t.Fatalf("first specifier: %v %v", m, err)
	}
	// Three changes with identical content (unbuffered channel: each send
	// returns only once the stream loop took it).
	for range 3 {
		sess.changed <- struct{}{}
	}
	sess.mu.Lock()
	sess.spec = spec(2 * time.Second)
	sess.mu.Unlock()
	sess.changed <- struct{}{}
	m, err := st.Recv()
	if err != nil || m.GetInterval().AsDuration() != 2*time.Second {
		t.Fatalf("after no-ops the next message must be the changed specifier, got %v %v", m, err)
	}
	// Reports after the first message reach the session.
	st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{EndpointHealthResponse: &healthv3.EndpointHealthResponse{}}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		sess.mu.Lock()
		n := sess.reports
		sess.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("report not delivered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The hub ending the session ends the stream with Unavailable.
	close(sess.done)
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("after session end: %v", err)
	}
	<-sess.closed
}

func TestEmptyNodeRejected(t *testing.T) {
	cc := serve(t, &fakeHub{}, &fakeFeed{})
	st, _ := healthv3.NewHealthDiscoveryServiceClient(cc).StreamHealthCheck(context.Background())
	st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{HealthCheckRequest: &healthv3.HealthCheckRequest{Node: &corev3.Node{}}}})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v", err)
	}
}

func TestFeedSnapshotThenUpdates(t *testing.T) {
	feed := &fakeFeed{ch: make(chan FeedUpdate, 1)}
	cc := serve(t, &fakeHub{}, feed)
	w, err := healthfeedv1.NewHealthFeedClient(cc).Watch(context.Background(), &healthfeedv1.WatchRequest{Subscriber: "cp"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Recv()
	if err != nil || !m.GetFull() || m.GetReplica() != "hds-x" || len(m.GetEndpoints()) != 1 || m.GetEndpoints()[0].GetVerdict() != healthfeedv1.Verdict_VERDICT_HEALTHY {
		t.Fatalf("snapshot %v %v", m, err)
	}
	feed.ch <- FeedUpdate{Removed: []catalog.EndpointKey{{Cluster: "web", Address: "10.0.0.1", Port: 80}}}
	m, err = w.Recv()
	if err != nil || m.GetFull() || len(m.GetRemoved()) != 1 || m.GetRemoved()[0].GetPort() != 80 {
		t.Fatalf("update %v %v", m, err)
	}
	close(feed.ch)
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("closed feed: %v", err)
	}
}
