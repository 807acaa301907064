// Package xdsload simulates a fleet of ADS clients (SotW or delta) against
// an xDS control plane and measures how long a change takes to reach and be
// ACKed by every client, and how many bytes it costs.
package xdsload

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Resource type URLs the simulated clients subscribe to.
const (
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Node describes the simulated proxies; client i gets id IDPrefix-i.
type Node struct {
	IDPrefix, Cluster, Zone, Role string
}

// Matcher says whether an endpoint set shows the change being waited for.
type Matcher func(*endpointpb.ClusterLoadAssignment) bool

// expectation is one change being waited for across the fleet.
type expectation struct {
	id    int64
	t0    time.Time
	match Matcher
	mu    sync.Mutex
	lat   []time.Duration
	done  chan struct{}
	want  int
}

func (e *expectation) record(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lat = append(e.lat, d)
	if len(e.lat) == e.want {
		close(e.done)
	}
}

// Fleet is N ADS streams.
type Fleet struct {
	delta   bool
	clients []*client
	size    int
	bytes   atomic.Int64 // response bytes received, all clients
	msgs    atomic.Int64
	failed  atomic.Int64 // streams that ended with an error
	badRes  atomic.Int64 // resources that did not decode
	exp     atomic.Pointer[expectation]
	nextID  atomic.Int64
	wg      sync.WaitGroup
	cancel  context.CancelFunc
	errMu   sync.Mutex
	err     error
}

type client struct {
	f       *Fleet
	node    *corepb.Node
	matched atomic.Int64 // id of the last expectation this client met
}

// start opens one ADS stream per client over conns (round robin) and
// subscribes each to clusters, listeners and the clusters' endpoints.
func (f *Fleet) start(ctx context.Context, conns []*grpc.ClientConn, n int, node Node) {
	ctx, f.cancel = context.WithCancel(ctx)
	delta := f.delta
	for i := range n {
		md, _ := structpb.NewStruct(map[string]any{"role": node.Role, "loadtest": true})
		c := &client{f: f, node: &corepb.Node{
			Id: fmt.Sprintf("%s-%d", node.IDPrefix, i), Cluster: node.Cluster, Metadata: md,
			Locality:      &corepb.Locality{Zone: node.Zone},
			UserAgentName: "sidemesh-loadtest",
		}}
		f.clients = append(f.clients, c)
		f.wg.Add(1)
		go func(cc grpc.ClientConnInterface) {
			defer f.wg.Done()
			var err error
			if delta {
				err = c.runDelta(ctx, discoverypb.NewAggregatedDiscoveryServiceClient(cc))
			} else {
				err = c.runSotW(ctx, discoverypb.NewAggregatedDiscoveryServiceClient(cc))
			}
			if err != nil && ctx.Err() == nil {
				f.failed.Add(1)
				f.errMu.Lock()
				if f.err == nil {
					f.err = err
				}
				f.errMu.Unlock()
			}
		}(conns[i%len(conns)])
	}
}

// Stop closes every stream.
func (f *Fleet) Stop() {
	f.cancel()
	f.wg.Wait()
}

// Bytes is the total size of every response received so far.
func (f *Fleet) Bytes() int64 { return f.bytes.Load() }

// Failed is the number of streams that broke, and the first error.
func (f *Fleet) Failed() (int64, error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.failed.Load(), f.err
}

// BadResources counts resources that did not decode as their type.
func (f *Fleet) BadResources() int64 { return f.badRes.Load() }

// Expect arms a change: from now on every client that ACKs a response
// whose endpoints match m is recorded. Call Wait to collect.
func (f *Fleet) Expect(m Matcher) *Wait {
	e := &expectation{id: f.nextID.Add(1), t0: time.Now(), match: m, done: make(chan struct{}), want: f.size}
	f.exp.Store(e)
	return &Wait{e: e}
}

// Wait is an armed expectation.
type Wait struct{ e *expectation }

// Start is when the expectation was armed (the change's time zero).
func (w *Wait) Start() time.Time { return w.e.t0 }

// Until waits for every client or ctx, and returns the per-client times from
// the change to the ACK of the matching response (fewer than the fleet size
// if ctx ended first).
func (w *Wait) Until(ctx context.Context) []time.Duration {
	select {
	case <-w.e.done:
	case <-ctx.Done():
	}
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	return append([]time.Duration(nil), w.e.lat...)
}

// seen checks endpoint sets against the armed expectation, after the ACK
// was sent. Resources are decoded only while this client still waits for
// the expectation, and only until one matches: decoding every endpoint set
// of every SotW push for every client would make the harness, not the
// control plane, the bottleneck.
func (c *client) seen(typeURL string, res []*anypb.Any) {
	if typeURL != typeEndpoint {
		return
	}
	e := c.f.exp.Load()
	if e == nil || c.matched.Load() >= e.id {
		return
	}
	for _, a := range res {
		var cla endpointpb.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			c.f.badRes.Add(1)
			continue
		}
		if e.match(&cla) {
			c.matched.Store(e.id)
			e.record(time.Since(e.t0))
			return
		}
	}
}

// edsNames lists the EDS service names of the clusters in a CDS response.
func (c *client) edsNames(res []*anypb.Any) []string {
	var names []string
	for _, a := range res {
		var cl clusterpb.Cluster
		if err := a.UnmarshalTo(&cl); err != nil {
			c.f.badRes.Add(1)
			continue
		}
		if cl.GetType() == clusterpb.Cluster_EDS {
			name := cl.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = cl.GetName()
			}
			names = append(names, name)
		}
	}
	return names
}

func (c *client) account(m proto.Message) {
	c.f.bytes.Add(int64(proto.Size(m)))
	c.f.msgs.Add(1)
}

func (c *client) runSotW(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	send := func(r *discoverypb.DiscoveryRequest) error {
		if first {
			r.Node, first = c.node, false // node only on the first request, like Envoy
		}
		return st.Send(r)
	}
	for _, t := range []string{typeCluster, typeListener} {
		if err := send(&discoverypb.DiscoveryRequest{TypeUrl: t}); err != nil {
			return err
		}
	}
	var edsNames []string
	edsVersion, edsNonce, edsAsked := "", "", false
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		c.account(resp)
		var names []string
		if resp.GetTypeUrl() == typeCluster {
			names = c.edsNames(resp.GetResources())
			sort.Strings(names)
		}
		ack := &discoverypb.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if resp.GetTypeUrl() == typeEndpoint {
			ack.ResourceNames = edsNames
			edsVersion, edsNonce = resp.GetVersionInfo(), resp.GetNonce()
		}
		if err := send(ack); err != nil {
			return err
		}
		c.seen(resp.GetTypeUrl(), resp.GetResources())
		if resp.GetTypeUrl() == typeCluster && (!edsAsked || !equal(names, edsNames)) {
			edsNames, edsAsked = names, true
			if err := send(&discoverypb.DiscoveryRequest{TypeUrl: typeEndpoint, ResourceNames: edsNames, VersionInfo: edsVersion, ResponseNonce: edsNonce}); err != nil {
				return err
			}
		}
	}
}

func (c *client) runDelta(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	send := func(r *discoverypb.DeltaDiscoveryRequest) error {
		if first {
			r.Node, first = c.node, false
		}
		return st.Send(r)
	}
	for _, t := range []string{typeCluster, typeListener} {
		// No names on the first request: a wildcard subscription.
		if err := send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: t}); err != nil {
			return err
		}
	}
	eds := map[string]bool{}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		c.account(resp)
		res := make([]*anypb.Any, 0, len(resp.GetResources()))
		for _, r := range resp.GetResources() {
			if r.GetResource() != nil {
				res = append(res, r.GetResource())
			}
		}
		if err := send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		c.seen(resp.GetTypeUrl(), res)
		if resp.GetTypeUrl() == typeCluster {
			var sub []string
			for _, n := range c.edsNames(res) {
				if !eds[n] {
					eds[n] = true
					sub = append(sub, n)
				}
			}
			var unsub []string
			for _, n := range resp.GetRemovedResources() {
				if eds[n] {
					delete(eds, n)
					unsub = append(unsub, n)
				}
			}
			if len(sub)+len(unsub) > 0 {
				if err := send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: typeEndpoint, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
					return err
				}
			}
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// HasPort matches an endpoint set that contains an endpoint on port.
func HasPort(port uint32) Matcher {
	return func(cla *endpointpb.ClusterLoadAssignment) bool {
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				if e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == port {
					return true
				}
			}
		}
		return false
	}
}

// Any matches every endpoint set (for the initial sync).
func Any(*endpointpb.ClusterLoadAssignment) bool { return true }
