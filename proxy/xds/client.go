// Package xds is the proxy's ADS client: delta (incremental) by default,
// state-of-the-world as a fallback. It validates every resource, hands the
// complete candidate set to an Applier, ACKs what applied and NACKs what did
// not with the reason, keeping the last good set. It reconnects with jittered
// back-off and never drops the config it has while the server is away.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Applier turns a complete candidate resource set into running config. An
// error rejects the update (NACK) and must leave the running config as it was.
type Applier interface {
	Apply(ctx context.Context, r *Resources) error
}

// Config configures a Client.
type Config struct {
	Addr        string
	Node        *corev3.Node
	SotW        bool // use state-of-the-world instead of delta
	BackoffBase time.Duration
	BackoffMax  time.Duration
	Log         *slog.Logger
	// OnResult, if set, is called after each response: typ is the short type
	// name, err the NACK reason or nil.
	OnResult func(typ string, err error)
}

// Client is an ADS client.
type Client struct {
	cfg     Config
	applier Applier

	mu        sync.Mutex // guards state for readers outside the stream goroutine
	state     *Resources
	versions  map[string]map[string]string // delta per-resource versions
	lastVer   map[string]string            // SotW accepted version per type
	lastNack  map[string]string
	gotLDS    atomic.Bool
	gotCDS    atomic.Bool
	connected atomic.Bool
}

// New creates a client; Run starts it.
func New(cfg Config, a Applier) *Client {
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 250 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, applier: a, state: NewResources(), versions: map[string]map[string]string{},
		lastVer: map[string]string{}, lastNack: map[string]string{}}
}

// Ready reports whether the initial config is complete, as Envoy's
// initialization: listeners and clusters received, and every route config
// and endpoint set they reference present.
func (c *Client) Ready() bool {
	if !c.gotLDS.Load() || !c.gotCDS.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rds, eds := references(c.state)
	for _, n := range rds {
		if _, ok := c.state.Routes[n]; !ok {
			return false
		}
	}
	for _, n := range eds {
		if _, ok := c.state.Endpoints[n]; !ok {
			return false
		}
	}
	return true
}

// Connected reports whether a stream is up.
func (c *Client) Connected() bool { return c.connected.Load() }

// Status is the client's view for /config_dump.
type Status struct {
	Server    string            `json:"server"`
	Protocol  string            `json:"protocol"`
	Connected bool              `json:"connected"`
	Versions  map[string]string `json:"versions,omitempty"`
	LastNack  map[string]string `json:"last_nack,omitempty"`
}

// Status returns the current connection and version state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := "delta"
	if c.cfg.SotW {
		p = "sotw"
	}
	vs := map[string]string{}
	for t, v := range c.lastVer {
		vs[shortType(t)] = v
	}
	ns := map[string]string{}
	for t, v := range c.lastNack {
		ns[shortType(t)] = v
	}
	return Status{Server: c.cfg.Addr, Protocol: p, Connected: c.connected.Load(), Versions: vs, LastNack: ns}
}

// Run connects and follows the server until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.cfg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("xds: %s: %w", c.cfg.Addr, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	attempt := 0
	for {
		got, err := c.runStream(ctx, ads)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			attempt = 0
		}
		attempt++
		d := c.backoff(attempt)
		c.cfg.Log.Warn("xds stream ended; keeping last good config", "server", c.cfg.Addr, "err", err, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// backoff is full-jitter exponential back-off.
func (c *Client) backoff(attempt int) time.Duration {
	ceil := c.cfg.BackoffBase << min(attempt-1, 20)
	if ceil > c.cfg.BackoffMax || ceil <= 0 {
		ceil = c.cfg.BackoffMax
	}
	return c.cfg.BackoffBase/2 + time.Duration(rand.Int64N(int64(ceil)))
}

func (c *Client) runStream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (gotResponse bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var st stream
	if c.cfg.SotW {
		s, err := ads.StreamAggregatedResources(sctx, grpc.WaitForReady(true))
		if err != nil {
			return false, err
		}
		st = &sotwStream{s: s, node: c.cfg.Node}
	} else {
		s, err := ads.DeltaAggregatedResources(sctx, grpc.WaitForReady(true))
		if err != nil {
			return false, err
		}
		c.mu.Lock()
		init := map[string]map[string]string{}
		for t, m := range c.versions {
			init[t] = maps.Clone(m)
		}
		c.mu.Unlock()
		st = &deltaStream{s: s, node: c.cfg.Node, sent: map[string]map[string]bool{}, init: init}
	}
	// Names currently requested per type; RDS/EDS follow what LDS/CDS reference.
	want := map[string][]string{ClusterType: {"*"}, ListenerType: {"*"}}
	if c.cfg.SotW {
		// go-control-plane v0.14's SotW cache filters responses by the literal
		// names, so an explicit "*" returns nothing there; an empty list is
		// the (legacy) wildcard every SotW server understands, as Envoy sends.
		want[ClusterType], want[ListenerType] = nil, nil
	}
	sent := map[string]bool{}
	send := func(t, nonce string, nack error) error {
		wildcard := t == ClusterType || t == ListenerType
		if !sent[t] && len(want[t]) == 0 && !wildcard {
			return nil // an empty first request would be a legacy wildcard
		}
		sent[t] = true
		c.mu.Lock()
		v := c.lastVer[t]
		c.mu.Unlock()
		return st.request(t, want[t], nonce, v, nack)
	}
	c.mu.Lock()
	rds, eds := references(c.state)
	c.mu.Unlock()
	want[RouteType], want[EndpointType] = rds, eds
	for _, t := range []string{ClusterType, EndpointType, ListenerType, RouteType} {
		if err := send(t, "", nil); err != nil {
			return false, err
		}
	}
	for {
		u, rerr := st.recv()
		if rerr != nil && u == nil {
			return gotResponse, rerr
		}
		if !gotResponse {
			c.connected.Store(true)
			c.cfg.Log.Info("xds stream up", "server", c.cfg.Addr, "delta", !c.cfg.SotW)
		}
		gotResponse = true
		c.cfg.Log.Debug("xds response", "type", shortType(u.typeURL), "version", u.version, "nonce", u.nonce, "resources", len(u.res), "removed", len(u.removed))
		err := rerr
		if err == nil {
			err = c.handle(ctx, u)
		}
		if err != nil {
			err = fmt.Errorf("%s update (nonce %s): %w", shortType(u.typeURL), u.nonce, err)
			c.cfg.Log.Warn("xds: rejecting update, keeping last good config", "err", err)
		}
		c.mu.Lock()
		if err != nil {
			c.lastNack[u.typeURL] = err.Error()
		} else {
			delete(c.lastNack, u.typeURL)
		}
		c.mu.Unlock()
		if c.cfg.OnResult != nil {
			c.cfg.OnResult(shortType(u.typeURL), err)
		}
		if err := send(u.typeURL, u.nonce, err); err != nil {
			return true, err
		}
		if err != nil {
			continue
		}
		c.mu.Lock()
		rds, eds := references(c.state)
		c.mu.Unlock()
		for t, names := range map[string][]string{RouteType: rds, EndpointType: eds} {
			if !slices.Equal(names, want[t]) {
				want[t] = names
				if err := send(t, "", nil); err != nil {
					return true, err
				}
			}
		}
	}
}

// handle validates u, builds the candidate set and applies it.
func (c *Client) handle(ctx context.Context, u *update) error {
	c.mu.Lock()
	cand := c.state.clone()
	c.mu.Unlock()
	var errs []error
	decoded := map[string]validator{}
	for name, a := range u.res {
		m, err := decode(u.typeURL, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", shortType(u.typeURL), name, err))
			continue
		}
		decoded[name] = m
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	switch u.typeURL {
	case ListenerType:
		cand.Listeners = merge(cand.Listeners, decoded, u, func(v validator) *listenerv3.Listener { return v.(*listenerv3.Listener) })
	case RouteType:
		cand.Routes = merge(cand.Routes, decoded, u, func(v validator) *routev3.RouteConfiguration { return v.(*routev3.RouteConfiguration) })
	case ClusterType:
		cand.Clusters = merge(cand.Clusters, decoded, u, func(v validator) *clusterv3.Cluster { return v.(*clusterv3.Cluster) })
	case EndpointType:
		cand.Endpoints = merge(cand.Endpoints, decoded, u, func(v validator) *endpointv3.ClusterLoadAssignment {
			return v.(*endpointv3.ClusterLoadAssignment)
		})
	default:
		return fmt.Errorf("unexpected type %s", u.typeURL)
	}
	// Drop RDS/EDS resources nothing references any more.
	rds, eds := references(cand)
	cand.Routes = keep(cand.Routes, rds)
	cand.Endpoints = keep(cand.Endpoints, eds)
	if err := c.applier.Apply(ctx, cand); err != nil {
		return err
	}
	c.mu.Lock()
	c.state = cand
	c.lastVer[u.typeURL] = u.version
	if u.vers != nil {
		vm := c.versions[u.typeURL]
		if vm == nil {
			vm = map[string]string{}
			c.versions[u.typeURL] = vm
		}
		for n, v := range u.vers {
			vm[n] = v
		}
		for _, n := range u.removed {
			delete(vm, n)
		}
	}
	c.mu.Unlock()
	switch u.typeURL {
	case ListenerType:
		c.gotLDS.Store(true)
	case ClusterType:
		c.gotCDS.Store(true)
	}
	return nil
}

func merge[T any](cur map[string]T, decoded map[string]validator, u *update, conv func(validator) T) map[string]T {
	if u.full {
		cur = map[string]T{}
	}
	for n, v := range decoded {
		cur[n] = conv(v)
	}
	for _, n := range u.removed {
		delete(cur, n)
	}
	return cur
}

func keep[T any](m map[string]T, names []string) map[string]T {
	if len(m) == len(names) {
		return m
	}
	out := make(map[string]T, len(names))
	for _, n := range names {
		if v, ok := m[n]; ok {
			out[n] = v
		}
	}
	return out
}

func shortType(t string) string {
	switch t {
	case ListenerType:
		return "LDS"
	case RouteType:
		return "RDS"
	case ClusterType:
		return "CDS"
	case EndpointType:
		return "EDS"
	}
	return t
}

// Snapshot returns the accepted resources (read-only).
func (c *Client) Snapshot() *Resources {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}
