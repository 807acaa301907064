// Package hdsclient is the proxy's Health Discovery Service client
// (envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck), with
// Envoy's HdsDelegate behaviour: it announces the node and its check
// protocols, runs exactly the checks of the latest HealthCheckSpecifier
// (applied as a whole, identical ones ignored, hosts and checkers that stay
// keep their state), reports every host every `interval`, and on a broken
// stream reconnects with full-jitter backoff while the checks keep running.
package hdsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/proxy/healthcheck"
)

// MetadataProtocols is the node metadata key listing the check protocols
// beyond Envoy's Capability enum (which has no gRPC); the sidemesh HDS
// reads it.
const MetadataProtocols = "hds_protocols"

// Config configures a Client.
type Config struct {
	// Addr is the HDS address host:port, or a comma-separated list of
	// replicas; each reconnect tries the next one.
	Addr string
	Node *corev3.Node
	Log  *slog.Logger
	// BackoffBase and BackoffMax bound the full-jitter reconnect delay
	// (Envoy: 1 s and 30 s, the defaults).
	BackoffBase, BackoffMax time.Duration
	// SourceIP binds probe connections (unless a cluster's
	// upstream_bind_config says otherwise); zero: the system's choice.
	SourceIP netip.Addr
	// Registerer receives the client's counters (optional).
	Registerer prometheus.Registerer
	// DialOptions are added to the insecure default.
	DialOptions []grpc.DialOption
}

// Client is one proxy's HDS client.
type Client struct {
	cfg   Config
	addrs []string
	node  *corev3.Node
	met   *metrics

	mu      sync.Mutex
	set     *checkSet
	st      Status
	applied []byte // deterministic encoding of the applied specifier
}

// Status is a snapshot for the admin page.
type Status struct {
	Addr           string          `json:"addr"`
	Connected      bool            `json:"connected"`
	Streams        int             `json:"streams"`
	Specifiers     int             `json:"specifiers_received"`
	Updates        int             `json:"updates_applied"`
	Errors         int             `json:"errors"`
	LastError      string          `json:"last_error,omitempty"`
	Reports        int             `json:"reports_sent"`
	ReportInterval time.Duration   `json:"report_interval_ns"`
	Clusters       []ClusterStatus `json:"clusters"`
}

// ClusterStatus is one checked cluster.
type ClusterStatus struct {
	Name     string       `json:"name"`
	Checkers []string     `json:"checkers"`
	Hosts    []HostStatus `json:"hosts"`
}

// HostStatus is one checked host.
type HostStatus struct {
	Address   string `json:"address"` // serving address (what is reported)
	CheckAddr string `json:"check_address"`
	Zone      string `json:"zone,omitempty"`
	Health    string `json:"health"`
	Attempts  uint64 `json:"attempts"`
	Failures  uint64 `json:"failures"`
	LastError string `json:"last_error,omitempty"`
}

// New returns a client; Run starts it. It fails only if the counters
// cannot be registered.
func New(cfg Config) (*Client, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	var addrs []string
	for _, a := range strings.Split(cfg.Addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("hds client metrics: %w", err)
	}
	return &Client{cfg: cfg, addrs: addrs, node: withProtocols(cfg.Node), set: &checkSet{}, met: met}, nil
}

// withProtocols copies node and lists HTTP, TCP and GRPC in its metadata.
func withProtocols(n *corev3.Node) *corev3.Node {
	n = proto.Clone(n).(*corev3.Node)
	if n == nil {
		n = &corev3.Node{}
	}
	if n.Metadata == nil {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	if _, ok := n.Metadata.Fields[MetadataProtocols]; !ok {
		l, _ := structpb.NewList([]any{"HTTP", "TCP", "GRPC"})
		n.Metadata.Fields[MetadataProtocols] = structpb.NewListValue(l)
	}
	return n
}

// Status returns a snapshot of the connection and of every checked host.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	st.Clusters = nil
	for _, cl := range c.set.clusters {
		cs := ClusterStatus{Name: cl.name}
		for _, k := range cl.checkers {
			cs.Checkers = append(cs.Checkers, k.c.Kind())
		}
		for _, h := range cl.hosts {
			s := h.h.State()
			sa := h.endpoint.GetAddress().GetSocketAddress()
			cs.Hosts = append(cs.Hosts, HostStatus{
				Address: fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()), CheckAddr: h.h.Target.Addr,
				Zone: h.locality.GetZone(), Health: s.HealthStatus().String(),
				Attempts: s.Attempts, Failures: s.Failures, LastError: s.LastError,
			})
		}
		st.Clusters = append(st.Clusters, cs)
	}
	return st
}

// Run keeps a stream to HDS until ctx ends, then stops every check. It
// returns an error only for a config it can never run with.
func (c *Client) Run(ctx context.Context) error {
	if len(c.addrs) == 0 {
		return errors.New("hds client: no address")
	}
	defer func() {
		c.mu.Lock()
		set := c.set
		c.set = &checkSet{}
		c.mu.Unlock()
		set.stop()
	}()
	attempt := 0
	for i := 0; ; i++ {
		addr := c.addrs[i%len(c.addrs)]
		err := c.stream(ctx, addr, &attempt)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		c.st.Connected = false
		c.st.Errors++
		if err != nil {
			c.st.LastError = err.Error()
		}
		c.met.event("errors")
		c.applied = nil // an identical specifier on the next stream is applied again
		c.mu.Unlock()
		ceil := min(c.cfg.BackoffBase<<min(attempt, 20), c.cfg.BackoffMax)
		delay := time.Duration(rand.Int64N(int64(ceil) + 1))
		attempt++
		c.cfg.Log.Warn("hds stream ended; checks keep running", "addr", addr, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

type recvResult struct {
	spec *healthv3.HealthCheckSpecifier
	err  error
}

func (c *Client) stream(ctx context.Context, addr string, attempt *int) error {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.cfg.DialOptions...)
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Not WaitForReady: a dead replica must fail fast so the next retry
	// tries the next address.
	st, err := healthv3.NewHealthDiscoveryServiceClient(conn).StreamHealthCheck(sctx)
	if err != nil {
		return fmt.Errorf("open stream to %s: %w", addr, err)
	}
	req := &healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{
		HealthCheckRequest: &healthv3.HealthCheckRequest{Node: c.node, Capability: &healthv3.Capability{
			HealthCheckProtocols: []healthv3.Capability_Protocol{healthv3.Capability_HTTP, healthv3.Capability_TCP}}}}}
	if err := st.Send(req); err != nil {
		return fmt.Errorf("send request to %s: %w", addr, err)
	}
	c.met.event("responses") // Envoy counts the request message as a response
	*attempt = 0             // Envoy resets the backoff once the stream is up
	c.mu.Lock()
	c.st.Addr, c.st.Connected = addr, true
	c.st.Streams++
	c.mu.Unlock()
	c.cfg.Log.Info("hds stream up", "addr", addr)

	recv := make(chan recvResult, 1)
	go func() {
		for {
			spec, err := st.Recv()
			select {
			case recv <- recvResult{spec, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var ticker *time.Ticker
	var tick <-chan time.Time
	var period time.Duration
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-recv:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					return errors.New("stream closed by server")
				}
				return r.err
			}
			if !c.apply(ctx, r.spec) {
				continue
			}
			// The report timer starts with the first applied specifier and
			// is re-armed only when the interval changes.
			p := time.Second
			if iv := r.spec.GetInterval(); iv != nil && iv.AsDuration() > 0 {
				p = max(iv.AsDuration(), time.Millisecond)
			}
			if ticker == nil || p != period {
				if ticker != nil {
					ticker.Stop()
				}
				ticker, period = time.NewTicker(p), p
				tick = ticker.C
				c.mu.Lock()
				c.st.ReportInterval = p
				c.mu.Unlock()
			}
		case <-tick:
			c.mu.Lock()
			resp := c.set.report()
			c.mu.Unlock()
			msg := &healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{EndpointHealthResponse: resp}}
			if err := st.Send(msg); err != nil {
				return fmt.Errorf("send report: %w", err)
			}
			c.mu.Lock()
			c.st.Reports++
			c.mu.Unlock()
			c.met.event("responses")
		}
	}
}

// apply installs spec unless it is identical to the applied one or
// invalid; it reports whether the specifier was applied.
func (c *Client) apply(ctx context.Context, spec *healthv3.HealthCheckSpecifier) bool {
	enc, _ := proto.MarshalOptions{Deterministic: true}.Marshal(spec)
	c.met.event("requests")
	c.mu.Lock()
	c.st.Specifiers++
	same := c.applied != nil && string(c.applied) == string(enc)
	cur := c.set
	c.mu.Unlock()
	if same {
		return false
	}
	p, err := cur.build(spec, healthcheck.Options{SourceIP: c.cfg.SourceIP, OnResult: c.met.probe}, c.cfg.Log)
	if err != nil {
		c.cfg.Log.Warn("hds: rejecting specifier, keeping the previous checks", "err", err)
		c.mu.Lock()
		c.st.Errors++
		c.st.LastError = err.Error()
		c.mu.Unlock()
		c.met.event("errors")
		return false
	}
	// Sessions live for the client, not the stream: use the Run context's
	// lifetime through ctx (the stream's parent).
	next := cur.commit(ctx, p)
	c.mu.Lock()
	c.set = next
	c.applied = enc
	c.st.Updates++
	c.mu.Unlock()
	c.met.event("updates")
	n := 0
	for _, cl := range next.clusters {
		n += len(cl.hosts)
	}
	c.cfg.Log.Info("hds: applied specifier", "clusters", len(next.clusters), "hosts", n)
	return true
}

// ServeHTTP serves Status as JSON (an admin page, e.g. GET /hds).
func (c *Client) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(c.Status())
}
