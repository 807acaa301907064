// Package simclient is a simulated HDS client that behaves like Envoy's
// HdsDelegate: it sends a HealthCheckRequest (node + capabilities) first,
// applies each HealthCheckSpecifier as the complete desired state (ignoring
// identical ones), keeps host health across reconnects, reports all hosts
// every `interval` starting one interval after a specifier, reports a new
// host UNHEALTHY until its first check, applies the check thresholds, and
// reconnects with Envoy's full-jitter backoff (resetting it once a stream is
// up). Checks are answered from a truth table instead of the network, so
// tests and the load tester can simulate a fleet.
package simclient

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	healthv3 "github.com/envoyproxy/go-control-plane/envoy/service/health/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// Truth says whether an endpoint is healthy as seen by this client.
type Truth func(cluster, addr string, port uint32) bool

// Client is one simulated proxy.
type Client struct {
	Addrs []string // HDS replicas; a reconnect tries the next one
	Node  *corev3.Node
	Caps  []healthv3.Capability_Protocol // default [HTTP, TCP] like Envoy
	Truth Truth
	// BackoffBase/Max: Envoy uses 1 s and 30 s.
	BackoffBase, BackoffMax time.Duration
	// Timeout makes a check of an unhealthy endpoint report TIMEOUT
	// instead of UNHEALTHY.
	Timeout bool

	mu          sync.Mutex
	spec        *healthv3.HealthCheckSpecifier
	hosts       map[string]*host // "cluster/ip:port"
	connectedTo string
	streams     int
	specs       int
	reports     int
	checks      int64
	conns       map[string]*grpc.ClientConn
}

type host struct {
	cluster   string
	addr      string
	port      uint32
	loc       *corev3.Locality
	ep        *endpointv3.Endpoint
	healthy   bool
	checked   bool
	fails     int
	succ      int
	nextCheck time.Time
	interval  time.Duration
	uth, hth  int
}

// Key is how endpoints are named: cluster/ip:port.
func Key(cluster, addr string, port uint32) string {
	return cluster + "/" + net.JoinHostPort(addr, strconv.FormatUint(uint64(port), 10))
}

// Run connects and serves until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.hosts == nil {
		c.hosts = map[string]*host{}
	}
	c.conns = map[string]*grpc.ClientConn{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, cc := range c.conns {
			cc.Close()
		}
		c.mu.Unlock()
	}()
	base, maxB := c.BackoffBase, c.BackoffMax
	if base <= 0 {
		base = time.Second
	}
	if maxB <= 0 {
		maxB = 30 * time.Second
	}
	go c.checkLoop(ctx)
	attempt := 0
	for i := 0; ; i++ {
		addr := c.Addrs[i%len(c.Addrs)]
		up := c.stream(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if up {
			attempt = 0 // Envoy resets its backoff once a stream is created
		}
		// Full jitter: random in [0, min(base·2^n, max)).
		ceil := min(base<<min(attempt, 20), maxB)
		attempt++
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(rand.Int64N(int64(ceil)))):
		}
	}
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	c.conns[addr] = cc
	return cc, nil
}

// stream runs one HDS stream; it reports whether the stream came up.
func (c *Client) stream(ctx context.Context, addr string) bool {
	cc, err := c.conn(addr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := healthv3.NewHealthDiscoveryServiceClient(cc).StreamHealthCheck(ctx)
	if err != nil {
		return false
	}
	caps := c.Caps
	if caps == nil {
		caps = []healthv3.Capability_Protocol{healthv3.Capability_HTTP, healthv3.Capability_TCP}
	}
	if err := st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_HealthCheckRequest{
		HealthCheckRequest: &healthv3.HealthCheckRequest{Node: c.Node, Capability: &healthv3.Capability{HealthCheckProtocols: caps}},
	}}); err != nil {
		return false
	}
	c.mu.Lock()
	c.streams++
	c.connectedTo = addr
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.connectedTo = ""
		c.mu.Unlock()
	}()

	// Envoy: a new stream forgets the last specifier hash and does not
	// report until a specifier arrives.
	var last *healthv3.HealthCheckSpecifier
	var reportC <-chan time.Time
	var ticker *time.Ticker
	var period time.Duration
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	recv := make(chan *healthv3.HealthCheckSpecifier)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case recv <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return true
		case <-recvErr:
			return true
		case spec := <-recv:
			if last != nil && proto.Equal(last, spec) {
				continue // identical: ignored, timer untouched
			}
			last = spec
			c.apply(spec)
			iv := spec.GetInterval().AsDuration()
			if spec.GetInterval() == nil {
				iv = time.Second
			}
			// The first specifier starts the report timer; later ones re-arm
			// it only when the interval changes (as Envoy does).
			if ticker == nil {
				ticker = time.NewTicker(iv)
				reportC = ticker.C
				period = iv
			} else if iv != period {
				ticker.Reset(iv)
				period = iv
			}
		case <-reportC:
			if err := st.Send(&healthv3.HealthCheckRequestOrEndpointHealthResponse{RequestType: &healthv3.HealthCheckRequestOrEndpointHealthResponse_EndpointHealthResponse{
				EndpointHealthResponse: c.report(),
			}}); err != nil {
				return true
			}
		}
	}
}

func (c *Client) apply(spec *healthv3.HealthCheckSpecifier) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spec = spec
	c.specs++
	keep := map[string]bool{}
	now := time.Now()
	for _, chc := range spec.GetClusterHealthChecks() {
		hc := chc.GetHealthChecks()[0]
		iv := hc.GetNoTrafficInterval().AsDuration()
		if iv <= 0 {
			iv = 60 * time.Second // what Envoy would do for an HDS cluster
		}
		for _, le := range chc.GetLocalityEndpoints() {
			for _, ep := range le.GetEndpoints() {
				sa := ep.GetAddress().GetSocketAddress()
				k := Key(chc.GetClusterName(), sa.GetAddress(), sa.GetPortValue())
				keep[k] = true
				h, ok := c.hosts[k]
				if !ok || !proto.Equal(h.ep, ep) {
					// New hosts start failed and are checked right away.
					h = &host{cluster: chc.GetClusterName(), addr: sa.GetAddress(), port: sa.GetPortValue(), ep: ep, nextCheck: now}
					c.hosts[k] = h
				}
				h.loc, h.interval = le.GetLocality(), iv
				h.uth, h.hth = int(hc.GetUnhealthyThreshold().GetValue()), int(hc.GetHealthyThreshold().GetValue())
			}
		}
	}
	for k := range c.hosts {
		if !keep[k] {
			delete(c.hosts, k)
		}
	}
}

// checkLoop runs due checks every 10 ms.
func (c *Client) checkLoop(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.mu.Lock()
			for _, h := range c.hosts {
				if now.Before(h.nextCheck) {
					continue
				}
				h.nextCheck = now.Add(h.interval)
				c.checks++
				ok := c.Truth == nil || c.Truth(h.cluster, h.addr, h.port)
				first := !h.checked
				h.checked = true
				if ok {
					h.fails = 0
					h.succ++
					if !h.healthy && (first || h.succ >= max(h.hth, 1)) {
						h.healthy = true
					}
				} else {
					h.succ = 0
					h.fails++
					if h.healthy && h.fails >= max(h.uth, 1) {
						h.healthy = false
					}
				}
			}
			c.mu.Unlock()
		}
	}
}

func (c *Client) report() *healthv3.EndpointHealthResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reports++
	resp := &healthv3.EndpointHealthResponse{}
	for _, chc := range c.spec.GetClusterHealthChecks() {
		ceh := &healthv3.ClusterEndpointsHealth{ClusterName: chc.GetClusterName()}
		for _, le := range chc.GetLocalityEndpoints() {
			leh := &healthv3.LocalityEndpointsHealth{Locality: le.GetLocality()}
			for _, ep := range le.GetEndpoints() {
				sa := ep.GetAddress().GetSocketAddress()
				h := c.hosts[Key(chc.GetClusterName(), sa.GetAddress(), sa.GetPortValue())]
				st := corev3.HealthStatus_UNHEALTHY
				switch {
				case h != nil && h.healthy:
					st = corev3.HealthStatus_HEALTHY
				case h != nil && h.checked && c.Timeout:
					st = corev3.HealthStatus_TIMEOUT
				}
				eh := &healthv3.EndpointHealth{Endpoint: &endpointv3.Endpoint{Address: ep.GetAddress()}, HealthStatus: st}
				leh.EndpointsHealth = append(leh.EndpointsHealth, eh)
				resp.EndpointsHealth = append(resp.EndpointsHealth, eh) // the deprecated flat list, as Envoy fills it
			}
			ceh.LocalityEndpointsHealth = append(ceh.LocalityEndpointsHealth, leh)
		}
		resp.ClusterEndpointsHealth = append(resp.ClusterEndpointsHealth, ceh)
	}
	return resp
}

// SetTruth replaces the truth table while running.
func (c *Client) SetTruth(t Truth) {
	c.mu.Lock()
	c.Truth = t
	c.mu.Unlock()
}

// Assigned returns the endpoints of the current specifier, sorted.
func (c *Client) Assigned() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, chc := range c.spec.GetClusterHealthChecks() {
		for _, le := range chc.GetLocalityEndpoints() {
			for _, ep := range le.GetEndpoints() {
				sa := ep.GetAddress().GetSocketAddress()
				out = append(out, Key(chc.GetClusterName(), sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	slices.Sort(out)
	return out
}

// Spec returns the last applied specifier.
func (c *Client) Spec() *healthv3.HealthCheckSpecifier {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spec
}

// Stats are counters for tests and the load tester.
type Stats struct {
	ConnectedTo                  string
	Streams, Specifiers, Reports int
	Checks                       int64
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{ConnectedTo: c.connectedTo, Streams: c.streams, Specifiers: c.specs, Reports: c.reports, Checks: c.checks}
}
