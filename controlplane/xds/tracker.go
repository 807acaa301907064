package xds

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/peer"
)

// Tracker is the server's callbacks: it knows every stream, what each was
// sent and ACKed, records NACKs per node and type, and keeps a NACKed SotW
// version from being re-sent in a loop.
type Tracker struct {
	log  *slog.Logger
	hash *nodeHash

	mu         sync.Mutex
	streams    map[streamKey]*stream       // SotW and delta number their streams separately
	nacks      map[string]map[string]*NACK // node id -> type URL -> last NACK
	lastChange map[string]time.Time        // type URL -> last content change

	clients   *prometheus.GaugeVec
	pushTotal *prometheus.CounterVec
	sends     *prometheus.CounterVec
	nackTotal *prometheus.CounterVec
	latency   *prometheus.HistogramVec
}

// NACK is a client's rejection of one version of one type.
type NACK struct {
	Node    string    `json:"node"`
	TypeURL string    `json:"type_url"`
	Version string    `json:"version"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
	Count   int       `json:"count"`
}

type streamKey struct {
	delta bool
	id    int64
}

type stream struct {
	id     int64
	delta  bool
	peer   string
	node   *corev3.Node
	opened time.Time
	types  map[string]*typeState
}

type typeState struct {
	nonce    string // last sent
	version  string // last sent
	changeAt time.Time
	acked    string
	ackedAt  time.Time
	sent     int
	nacked   string
}

func newTracker(log *slog.Logger, reg prometheus.Registerer, hash *nodeHash) *Tracker {
	t := &Tracker{
		log: log, hash: hash,
		streams: map[streamKey]*stream{}, nacks: map[string]map[string]*NACK{}, lastChange: map[string]time.Time{},
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidemesh_controlplane_xds_clients", Help: "Connected ADS streams.",
		}, []string{"protocol"}),
		pushTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidemesh_controlplane_xds_resource_updates_total", Help: "Resource set changes applied to the cache, by type (one per changed group or endpoint set).",
		}, []string{"type"}),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidemesh_controlplane_xds_responses_total", Help: "Discovery responses sent to clients, by type and protocol.",
		}, []string{"type", "protocol"}),
		nackTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidemesh_controlplane_xds_nacks_total", Help: "NACKs received, by type.",
		}, []string{"type"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sidemesh_controlplane_xds_push_latency_seconds",
			Help:    "Time from a config change to the client's ACK of it, by type.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(t.clients, t.pushTotal, t.sends, t.nackTotal, t.latency)
	}
	return t
}

func shortType(url string) string {
	for i := len(url) - 1; i >= 0; i-- {
		if url[i] == '.' {
			return url[i+1:]
		}
	}
	return url
}

func (t *Tracker) markChange(typeURL string, at time.Time) {
	t.mu.Lock()
	t.lastChange[typeURL] = at
	t.mu.Unlock()
}

func (t *Tracker) pushes(typeURL string, n int) {
	t.pushTotal.WithLabelValues(shortType(typeURL)).Add(float64(n))
}

func protoLabel(delta bool) string {
	if delta {
		return "delta"
	}
	return "sotw"
}

func (t *Tracker) open(ctx context.Context, id int64, delta bool) {
	s := &stream{id: id, delta: delta, opened: time.Now(), types: map[string]*typeState{}}
	if p, ok := peer.FromContext(ctx); ok {
		s.peer = p.Addr.String()
	}
	t.mu.Lock()
	t.streams[streamKey{delta, id}] = s
	t.mu.Unlock()
	t.clients.WithLabelValues(protoLabel(delta)).Inc()
}

func (t *Tracker) close(id int64, delta bool) {
	t.mu.Lock()
	s, ok := t.streams[streamKey{delta, id}]
	delete(t.streams, streamKey{delta, id})
	t.mu.Unlock()
	if ok {
		t.clients.WithLabelValues(protoLabel(s.delta)).Dec()
	}
}

func (s *stream) state(typeURL string) *typeState {
	ts, ok := s.types[typeURL]
	if !ok {
		ts = &typeState{}
		s.types[typeURL] = ts
	}
	return ts
}

// request handles an ACK or NACK; it returns the version to pretend the
// client is at (for the SotW NACK fix) or "".
func (t *Tracker) request(id int64, delta bool, node *corev3.Node, typeURL, nonce, version string, errDetail string, isNACK bool) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamKey{delta, id}]
	if !ok {
		return ""
	}
	if node != nil && s.node == nil {
		s.node = node
	}
	ts := s.state(typeURL)
	if nonce == "" || nonce != ts.nonce {
		return "" // first request of the type, or stale
	}
	now := time.Now()
	if !isNACK {
		if ts.acked != "" && ts.changeAt.After(ts.ackedAt) {
			t.latency.WithLabelValues(shortType(typeURL)).Observe(now.Sub(ts.changeAt).Seconds())
		}
		ts.acked, ts.ackedAt, ts.nacked = ts.version, now, ""
		return ""
	}
	ts.nacked = ts.version
	nodeID := s.node.GetId()
	t.nackTotal.WithLabelValues(shortType(typeURL)).Inc()
	byType := t.nacks[nodeID]
	if byType == nil {
		byType = map[string]*NACK{}
		t.nacks[nodeID] = byType
	}
	prev := byType[typeURL]
	if prev != nil && prev.Version == ts.version && prev.Message == errDetail {
		prev.Count++
		prev.At = now
	} else {
		// Logged once per distinct rejection, not once per retry.
		t.log.Warn("client rejected config (NACK)", "node", nodeID, "type", shortType(typeURL), "version", ts.version, "error", errDetail)
		byType[typeURL] = &NACK{Node: nodeID, TypeURL: typeURL, Version: ts.version, Message: errDetail, At: now, Count: 1}
	}
	// Pretend the client holds the version it rejected: the cache then waits
	// for a new version instead of re-sending the same one at once.
	return ts.version
}

func (t *Tracker) response(id int64, delta bool, typeURL, nonce, version string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamKey{delta, id}]
	if !ok {
		return
	}
	ts := s.state(typeURL)
	ts.nonce, ts.version, ts.changeAt = nonce, version, t.lastChange[typeURL]
	ts.sent++
	t.sends.WithLabelValues(shortType(typeURL), protoLabel(s.delta)).Inc()
}

// OnStreamOpen implements serverv3.Callbacks.
func (t *Tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, false)
	return nil
}

// OnStreamClosed implements serverv3.Callbacks.
func (t *Tracker) OnStreamClosed(id int64, _ *corev3.Node) { t.close(id, false) }

// OnDeltaStreamOpen implements serverv3.Callbacks.
func (t *Tracker) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, true)
	return nil
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (t *Tracker) OnDeltaStreamClosed(id int64, _ *corev3.Node) { t.close(id, true) }

// OnStreamRequest implements serverv3.Callbacks.
func (t *Tracker) OnStreamRequest(id int64, r *discoveryv3.DiscoveryRequest) error {
	nack := r.GetErrorDetail() != nil
	if v := t.request(id, false, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetVersionInfo(), r.GetErrorDetail().GetMessage(), nack); nack && v != "" {
		r.VersionInfo = v
	}
	return nil
}

// OnStreamResponse implements serverv3.Callbacks.
func (t *Tracker) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
	t.response(id, false, r.GetTypeUrl(), r.GetNonce(), r.GetVersionInfo())
}

// OnStreamDeltaRequest implements serverv3.Callbacks. Delta needs no NACK fix:
// the subscription already remembers what was sent.
func (t *Tracker) OnStreamDeltaRequest(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
	t.request(id, true, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), "", r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
	return nil
}

// OnStreamDeltaResponse implements serverv3.Callbacks.
func (t *Tracker) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
	t.response(id, true, r.GetTypeUrl(), r.GetNonce(), r.GetSystemVersionInfo())
}

// OnFetchRequest implements serverv3.Callbacks.
func (t *Tracker) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse implements serverv3.Callbacks.
func (t *Tracker) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

var _ serverv3.Callbacks = (*Tracker)(nil)

// ClientInfo is one connected stream, for /clients.
type ClientInfo struct {
	Stream    int64                `json:"stream"`
	Protocol  string               `json:"protocol"`
	Node      string               `json:"node"`
	Cluster   string               `json:"cluster,omitempty"`
	Group     string               `json:"group"`
	Peer      string               `json:"peer"`
	Connected time.Time            `json:"connected"`
	Types     map[string]TypeState `json:"types"`
}

// TypeState is what one stream has of one type.
type TypeState struct {
	Sent      string    `json:"sent_version"`
	Acked     string    `json:"acked_version"`
	AckedAt   time.Time `json:"acked_at,omitzero"`
	NACKed    string    `json:"nacked_version,omitempty"`
	Responses int       `json:"responses"`
}

// Clients lists connected streams, oldest first.
func (t *Tracker) Clients() []ClientInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ClientInfo, 0, len(t.streams))
	for _, s := range t.streams {
		ci := ClientInfo{Stream: s.id, Protocol: protoLabel(s.delta), Node: s.node.GetId(), Cluster: s.node.GetCluster(),
			Group: t.hash.ID(s.node), Peer: s.peer, Connected: s.opened, Types: map[string]TypeState{}}
		for u, ts := range s.types {
			ci.Types[shortType(u)] = TypeState{Sent: ts.version, Acked: ts.acked, AckedAt: ts.ackedAt, NACKed: ts.nacked, Responses: ts.sent}
		}
		out = append(out, ci)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Connected.Before(out[j].Connected) })
	return out
}

// NACKs lists the last NACK per node and type (kept after disconnects).
func (t *Tracker) NACKs() []NACK {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []NACK{}
	for _, byType := range t.nacks {
		for _, n := range byType {
			out = append(out, *n)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].TypeURL < out[j].TypeURL
	})
	return out
}
