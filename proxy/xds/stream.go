package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// update is one response from the server, protocol-independent.
type update struct {
	typeURL string
	nonce   string
	version string                // SotW version_info (delta: system_version_info)
	res     map[string]*anypb.Any // added or updated resources by name
	vers    map[string]string     // delta: per-resource versions
	removed []string
	full    bool // SotW LDS/CDS: res is the complete set
}

// stream hides SotW vs delta: request states the complete set of names the
// client wants for a type; the stream turns it into the protocol's message.
type stream interface {
	request(typeURL string, names []string, nonce, version string, nack error) error
	recv() (*update, error)
}

func errorDetail(err error) *status.Status {
	if err == nil {
		return nil
	}
	return &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}

type sotwStream struct {
	s     discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node  *corev3.Node
	first bool
}

func (s *sotwStream) request(typeURL string, names []string, nonce, version string, nack error) error {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, ResponseNonce: nonce, VersionInfo: version, ErrorDetail: errorDetail(nack)}
	if !s.first {
		req.Node, s.first = s.node, true
	}
	return s.s.Send(req)
}

func (s *sotwStream) recv() (*update, error) {
	r, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	u := &update{typeURL: r.GetTypeUrl(), nonce: r.GetNonce(), version: r.GetVersionInfo(), res: map[string]*anypb.Any{},
		full: r.GetTypeUrl() == ListenerType || r.GetTypeUrl() == ClusterType}
	for i, a := range r.GetResources() {
		name, err := resourceName(a)
		if err != nil {
			return u, fmt.Errorf("resources[%d]: %w", i, err)
		}
		u.res[name] = a
	}
	return u, nil
}

type deltaStream struct {
	s     discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node  *corev3.Node
	first bool
	sent  map[string]map[string]bool // names subscribed per type
	init  map[string]map[string]string
}

func (s *deltaStream) request(typeURL string, names []string, nonce, _ string, nack error) error {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: nonce, ErrorDetail: errorDetail(nack)}
	if !s.first {
		req.Node, s.first = s.node, true
	}
	cur := s.sent[typeURL]
	if cur == nil {
		cur = map[string]bool{}
		s.sent[typeURL] = cur
		// Tell a (possibly restarted) server what we already hold, so it
		// only sends what changed.
		req.InitialResourceVersions = s.init[typeURL]
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if !cur[n] {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
		}
	}
	for n := range cur {
		if !want[n] {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
		}
	}
	s.sent[typeURL] = want
	return s.s.Send(req)
}

func (s *deltaStream) recv() (*update, error) {
	r, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	u := &update{typeURL: r.GetTypeUrl(), nonce: r.GetNonce(), version: r.GetSystemVersionInfo(),
		res: map[string]*anypb.Any{}, vers: map[string]string{}, removed: r.GetRemovedResources()}
	for i, rr := range r.GetResources() {
		a := rr.GetResource()
		if a == nil {
			return u, fmt.Errorf("resources[%d] %q: no resource body", i, rr.GetName())
		}
		name, err := resourceName(a)
		if err != nil {
			return u, fmt.Errorf("resources[%d]: %w", i, err)
		}
		if rr.GetName() != "" && rr.GetName() != name {
			return u, fmt.Errorf("resources[%d]: name %q does not match the resource's own name %q", i, rr.GetName(), name)
		}
		u.res[name] = a
		u.vers[name] = rr.GetVersion()
	}
	return u, nil
}
