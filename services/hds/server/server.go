// Package server is the gRPC face of an HDS replica: Envoy's
// HealthDiscoveryService (StreamHealthCheck, FetchHealthCheck) and the
// project's HealthFeed.Watch. It owns the per-stream protocol (identity from
// the first message, full specifier on every new stream, no-op sends
// skipped); what to check and what the verdicts are come from a Hub.
package server

import (
	"context"
	"errors"
	"io"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/verdict"

	healthfeedv1 "github.com/sidemesh/sidemesh/proto/healthfeed/v1"
)

// Session is one proxy's HDS stream as the hub sees it.
type Session interface {
	// Changed fires when the proxy's desired specifier may have changed.
	Changed() <-chan struct{}
	// Done closes when the hub ends the session (replica shutting down).
	Done() <-chan struct{}
	// Specifier is the proxy's complete desired state now.
	Specifier() *healthv3.HealthCheckSpecifier
	// Sent records what the proxy was sent (for warm-up accounting).
	Sent(*healthv3.HealthCheckSpecifier)
	// Report takes one EndpointHealthResponse.
	Report(*healthv3.EndpointHealthResponse)
	// Close ends the session.
	Close()
}

// Hub decides what proxies check and aggregates what they report.
type Hub interface {
	Connect(node *corev3.Node, caps []healthv3.Capability_Protocol) (Session, error)
	// Fetch returns the current specifier of a proxy without a stream.
	Fetch(node *corev3.Node) *healthv3.HealthCheckSpecifier
}

// EndpointVerdict is one endpoint's aggregate.
type EndpointVerdict struct {
	Key      catalog.EndpointKey
	Verdict  verdict.Verdict
	Checkers []string
	Since    time.Time
	Reason   string
}

// FeedUpdate is a change of verdicts.
type FeedUpdate struct {
	Changed []EndpointVerdict
	Removed []catalog.EndpointKey
}

// FeedSource serves verdicts to HealthFeed watchers.
type FeedSource interface {
	// Watch returns the current verdicts and a channel of later changes,
	// filtered to clusters (empty: all). The channel closes if the watcher
	// falls too far behind. cancel releases the watch.
	Watch(subscriber string, clusters []string) (snapshot []EndpointVerdict, updates <-chan FeedUpdate, cancel func())
	ReplicaName() string
}

// HDS implements envoy.service.health.v3.HealthDiscoveryService.
type HDS struct {
	healthv3.UnimplementedHealthDiscoveryServiceServer
	Hub Hub
}

// Register adds both services to s.
func Register(s *grpc.Server, hub Hub, feed FeedSource) {
	healthv3.RegisterHealthDiscoveryServiceServer(s, &HDS{Hub: hub})
	healthfeedv1.RegisterHealthFeedServer(s, &Feed{Source: feed})
}

func identity(m *healthv3.HealthCheckRequestOrEndpointHealthResponse) (*healthv3.HealthCheckRequest, error) {
	req := m.GetHealthCheckRequest()
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "the first message must be a HealthCheckRequest carrying the node (identity binds to the stream)")
	}
	if req.GetNode().GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "HealthCheckRequest.node.id is empty")
	}
	return req, nil
}

// StreamHealthCheck serves one proxy.
func (h *HDS) StreamHealthCheck(stream healthv3.HealthDiscoveryService_StreamHealthCheckServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	req, err := identity(first)
	if err != nil {
		return err
	}
	sess, err := h.Hub.Connect(req.GetNode(), req.GetCapability().GetHealthCheckProtocols())
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "connect: %v", err)
	}
	defer sess.Close()

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if r := m.GetEndpointHealthResponse(); r != nil {
				sess.Report(r)
			}
			// A repeated HealthCheckRequest changes nothing: identity and
			// capabilities are bound at stream start.
		}
	}()

	var last *healthv3.HealthCheckSpecifier
	send := func() error {
		spec := sess.Specifier()
		// Envoy ignores identical specifiers; skip the send, but always
		// send the first on a stream (its hash was reset on reconnect).
		if last != nil && proto.Equal(last, spec) {
			return nil
		}
		if err := stream.Send(spec); err != nil {
			return err
		}
		sess.Sent(spec)
		last = spec
		return nil
	}
	if err := send(); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-sess.Done():
			return status.Error(codes.Unavailable, "HDS replica shutting down; reconnect")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-sess.Changed():
			if err := send(); err != nil {
				return err
			}
		}
	}
}

// FetchHealthCheck answers with the proxy's current specifier. It has no
// stream binding, so it needs the HealthCheckRequest form (with node).
func (h *HDS) FetchHealthCheck(_ context.Context, m *healthv3.HealthCheckRequestOrEndpointHealthResponse) (*healthv3.HealthCheckSpecifier, error) {
	req, err := identity(m)
	if err != nil {
		return nil, err
	}
	return h.Hub.Fetch(req.GetNode()), nil
}

// Feed implements sidemesh.healthfeed.v1.HealthFeed.
type Feed struct {
	healthfeedv1.UnimplementedHealthFeedServer
	Source FeedSource
}

// Watch sends a full snapshot, then changes.
func (f *Feed) Watch(req *healthfeedv1.WatchRequest, stream healthfeedv1.HealthFeed_WatchServer) error {
	snap, updates, cancel := f.Source.Watch(req.GetSubscriber(), req.GetClusters())
	defer cancel()
	replica := f.Source.ReplicaName()
	full := &healthfeedv1.HealthUpdate{Full: true, Replica: replica, Endpoints: toProto(snap)}
	if err := stream.Send(full); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case u, ok := <-updates:
			if !ok {
				return status.Error(codes.Unavailable, "watcher fell behind or replica stopping; reconnect for a fresh snapshot")
			}
			msg := &healthfeedv1.HealthUpdate{Replica: replica, Endpoints: toProto(u.Changed)}
			for _, k := range u.Removed {
				msg.Removed = append(msg.Removed, keyProto(k))
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func keyProto(k catalog.EndpointKey) *healthfeedv1.EndpointKey {
	return &healthfeedv1.EndpointKey{Cluster: k.Cluster, Address: k.Address, Port: k.Port}
}

func toProto(vs []EndpointVerdict) []*healthfeedv1.EndpointHealth {
	out := make([]*healthfeedv1.EndpointHealth, len(vs))
	for i, v := range vs {
		out[i] = &healthfeedv1.EndpointHealth{
			Endpoint: keyProto(v.Key),
			Verdict:  healthfeedv1.Verdict(v.Verdict),
			Checkers: v.Checkers,
			Since:    timestamppb.New(v.Since),
			Reason:   v.Reason,
		}
	}
	return out
}
