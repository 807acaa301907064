// Package server is the proxy's data plane: it turns accepted xDS resources
// into listeners, route tables and clusters (Apply), and serves HTTP and TCP
// traffic through them. Every request reads one immutable snapshot through an
// atomic pointer; config changes never block or disturb requests in flight.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/proxy/cluster"
	"github.com/sidemesh/sidemesh/proxy/route"
	"github.com/sidemesh/sidemesh/proxy/stats"
	"github.com/sidemesh/sidemesh/proxy/xds"
)

// Options configures a Proxy.
type Options struct {
	Log          *slog.Logger
	Metrics      *stats.Metrics
	DrainTimeout time.Duration // for removed listeners and shutdown
	AccessLog    io.Writer     // nil: access log off
	// Inherited are listening sockets taken over from a previous process
	// (hot restart), by address.
	Inherited map[string]net.Listener
	// Filters builds HTTP filters by typed_config type URL (the rate-limit,
	// fault and local rate-limit filters of issue 7 plug in here).
	Filters map[string]FilterFactory
	// PerRouteTypes lists the typed_per_filter_config types the filters
	// read besides their own filter types (e.g. RateLimitPerRoute). Any
	// other type NACKs the route config unless marked optional (Envoy).
	PerRouteTypes []string
}

// Snapshot is one immutable generation of routing state.
type Snapshot struct {
	Routes    map[string]*route.Table
	Clusters  map[string]*cluster.Cluster
	Resources *xds.Resources
	Applied   time.Time
}

// Proxy is the data plane.
type Proxy struct {
	opt  Options
	log  *slog.Logger
	snap atomic.Pointer[Snapshot]

	mu        sync.Mutex // serialises Apply and listener changes
	listeners map[string]*liveListener
	draining  bool
	inherited map[string]net.Listener
	drains    sync.WaitGroup
	accessMu  sync.Mutex
	warming   map[string]time.Time // route config → when it started waiting for clusters
}

// New creates a proxy with no config.
func New(opt Options) *Proxy {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = stats.New(nil)
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 15 * time.Second
	}
	p := &Proxy{opt: opt, log: opt.Log, listeners: map[string]*liveListener{}, inherited: opt.Inherited, warming: map[string]time.Time{}}
	p.snap.Store(&Snapshot{Routes: map[string]*route.Table{}, Clusters: map[string]*cluster.Cluster{}, Resources: xds.NewResources()})
	return p
}

// Snapshot is the current routing state.
func (p *Proxy) Snapshot() *Snapshot { return p.snap.Load() }

// Apply compiles a complete resource set and makes it live, or returns why
// it cannot (the running config is then untouched). It implements xds.Applier.
func (p *Proxy) Apply(ctx context.Context, r *xds.Resources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return errors.New("proxy is draining")
	}
	old := p.snap.Load()
	ns := &Snapshot{Routes: map[string]*route.Table{}, Clusters: map[string]*cluster.Cluster{}, Resources: r, Applied: time.Now()}
	var errs []error
	for _, name := range sortedNames(r.Routes) {
		t, err := compileTable(r.Routes[name], p.opt.Metrics, p.filterReg())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ns.Routes[name] = t
	}
	lcs := map[string]*listenerConfig{}
	addrs := map[string]string{}
	for _, name := range sortedNames(r.Listeners) {
		lc, err := compileListener(r.Listeners[name], p.opt.Metrics, p.filterReg())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if other, dup := addrs[lc.addr]; dup {
			errs = append(errs, fmt.Errorf("listener %q: address %s already used by listener %q", name, lc.addr, other))
			continue
		}
		addrs[lc.addr] = name
		lcs[name] = lc
	}
	hostSets := map[*cluster.Cluster]*cluster.HostSet{}
	for _, name := range sortedNames(r.Clusters) {
		prev := old.Clusters[name]
		c, err := cluster.Build(r.Clusters[name], prev, p.opt.Metrics)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c.EDSName != "" {
			if cla, ok := r.Endpoints[c.EDSName]; ok {
				hs, err := c.BuildHosts(cla, prev)
				if err != nil {
					errs = append(errs, fmt.Errorf("cluster_load_assignment %q: %w", c.EDSName, err))
					continue
				}
				hostSets[c] = hs
			}
		}
		ns.Clusters[name] = c
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.warm(old, ns, r)
	commit, err := p.prepareListeners(lcs)
	if err != nil {
		return err
	}
	for c, hs := range hostSets {
		c.SetHosts(hs)
	}
	p.snap.Store(ns)
	commit(ns)
	for name, oc := range old.Clusters {
		if nc := ns.Clusters[name]; nc == nil || !nc.SharesTransport(oc) {
			oc.Retire(p.opt.DrainTimeout)
		}
	}
	p.log.Debug("config applied", "listeners", len(lcs), "routes", len(ns.Routes), "clusters", len(ns.Clusters))
	_ = ctx
	return nil
}

func sortedNames[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ListenerAddrs returns the bound address of every live listener by name.
func (p *Proxy) ListenerAddrs() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for n, l := range p.listeners {
		out[n] = l.ln.Addr().String()
	}
	return out
}

// Listeners returns the live listening sockets by configured address, for
// handing over to a new process on hot restart.
func (p *Proxy) Listeners() map[string]net.Listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]net.Listener{}
	for _, l := range p.listeners {
		out[l.cfgAddr] = l.ln
	}
	return out
}

// DrainListeners stops accepting on every listener and drains them
// (Envoy's /drain_listeners); later config updates are refused.
func (p *Proxy) DrainListeners() {
	p.mu.Lock()
	p.draining = true
	ls := p.listeners
	p.listeners = map[string]*liveListener{}
	p.mu.Unlock()
	for _, l := range ls {
		p.drain(l)
	}
}

// Shutdown drains every listener and waits for drains until ctx ends.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.DrainListeners()
	done := make(chan struct{})
	go func() { p.drains.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// warmTimeout bounds how long a route config may wait for its clusters.
const warmTimeout = 10 * time.Second

// warm makes cluster changes hitless whatever order the control plane's
// resources arrive in (ADS does not order types): a route config that names
// a cluster not yet known or without endpoints keeps serving its previous
// version until the cluster is warm (or warmTimeout passes), and a cluster
// removed from CDS stays while a served route config still names it.
func (p *Proxy) warm(old, ns *Snapshot, r *xds.Resources) {
	warmCluster := func(name string) bool {
		c := ns.Clusters[name]
		return c != nil && (c.EDSName == "" || r.Endpoints[c.EDSName] != nil)
	}
	now := time.Now()
	for name, t := range ns.Routes {
		missing := ""
		for _, cn := range t.ClusterNames() {
			if !warmCluster(cn) {
				missing = cn
				break
			}
		}
		prev := old.Routes[name]
		if missing == "" || prev == nil {
			delete(p.warming, name)
			continue
		}
		since, ok := p.warming[name]
		if !ok {
			since = now
			p.warming[name] = now
		}
		if now.Sub(since) > warmTimeout {
			p.log.Warn("route config still names a cluster that is not warm; using it anyway", "route_config", name, "cluster", missing)
			continue
		}
		p.log.Debug("route config waits for cluster", "route_config", name, "cluster", missing)
		ns.Routes[name] = prev
	}
	for name := range p.warming {
		if _, ok := ns.Routes[name]; !ok {
			delete(p.warming, name)
		}
	}
	for _, t := range ns.Routes {
		for _, cn := range t.ClusterNames() {
			if ns.Clusters[cn] == nil && old.Clusters[cn] != nil {
				ns.Clusters[cn] = old.Clusters[cn] // still routed to: keep until the routes change
			}
		}
	}
}

func (p *Proxy) filterReg() filterReg {
	fr := filterReg{factories: p.opt.Filters, perRoute: map[string]bool{}}
	for _, t := range p.opt.PerRouteTypes {
		fr.perRoute[t] = true
	}
	return fr
}
