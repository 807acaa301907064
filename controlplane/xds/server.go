// Package xds serves translated resources over ADS (state of the world and
// delta on one registration). LDS/RDS/CDS come from one linear cache per
// node group and type, EDS from one shared cache of our own (edsCache): a
// change pushes only the changed resources, each encoded once. The HDS
// group alone is served from a full-state snapshot (see router).
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/sidemesh/sidemesh/controlplane/translate"
)

// snapshotTypes are served from the per-group snapshots.
var snapshotTypes = []struct {
	idx types.ResponseType
	url string
}{
	{types.Listener, resourcev3.ListenerType},
	{types.Route, resourcev3.RouteType},
	{types.Cluster, resourcev3.ClusterType},
	{types.Endpoint, resourcev3.EndpointType}, // HDS group only, see classify
}

// Server is the ADS server.
type Server struct {
	log    *slog.Logger
	snaps  cachev3.SnapshotCache
	eds    *edsCache
	cache  cachev3.Cache
	prefix string
	cl     cacheLogger

	gcMu        sync.RWMutex
	groupCaches map[string]*cachev3.LinearCache // type URL + " " + group
	ads         serverv3.Server
	hash        *nodeHash
	tracker     *Tracker

	mu       sync.Mutex
	out      *translate.Output
	versions map[string][4]string         // HDS group: LDS, RDS, CDS, EDS version
	resHash  map[string]map[string]string // group cache key -> resource name -> hash
	edsHash  map[string]string
}

// New builds a server; metrics go to reg. Serve it on a gRPC server built
// with ServerOptions.
func New(ctx context.Context, log *slog.Logger, reg prometheus.Registerer) *Server {
	s := &Server{log: log, hash: &nodeHash{}, versions: map[string][4]string{}, edsHash: map[string]string{}}
	s.hash.proxies.Store(&map[string]bool{})
	s.hash.byCluster.Store(&map[string]string{})
	cl := cacheLogger{log: log.With("component", "xds-cache")}
	// ads=false: gRPC clients name only what they need; ads=true would
	// drop such requests for good in go-control-plane v0.14.
	s.snaps = cachev3.NewSnapshotCache(false, s.hash, cl)
	// The prefix makes versions from an earlier process unknown, so
	// reconnecting clients get everything again.
	s.prefix = "v-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	s.eds = newEDSCache(s.prefix)
	s.groupCaches = map[string]*cachev3.LinearCache{}
	s.resHash = map[string]map[string]string{}
	s.cl = cl
	s.cache = router{s}
	s.tracker = newTracker(log, reg, s.hash)
	// Legacy wildcard stays on for LDS/CDS (Envoy asks for them with an
	// empty list) and is off for RDS/EDS, where gRPC's empty list means
	// "unsubscribe".
	s.ads = serverv3.NewServer(ctx, s.cache, s.tracker,
		config.DeactivateLegacyWildcardForTypes([]string{resourcev3.RouteType, resourcev3.EndpointType}))
	return s
}

// router picks the cache for a request. Most nodes are served from linear
// caches that encode each resource once and share the bytes across streams:
// one per (type, group) for LDS/RDS/CDS, and one shared edsCache for EDS,
// whose SotW responses carry only changed CLAs (as the xDS spec allows).
// HDS replicas read every SotW EDS response as the full set, so the HDS group
// is served from a snapshot: full state, re-sent whole on change (a handful
// of nodes).
type router struct{ s *Server }

func (r router) pick(typeURL string, n *corev3.Node) cachev3.Cache {
	group := r.s.hash.ID(n)
	switch {
	case group == translate.GroupHDS:
		return r.s.snaps
	case typeURL == resourcev3.EndpointType:
		return r.s.eds
	case typeURL == resourcev3.ListenerType || typeURL == resourcev3.RouteType || typeURL == resourcev3.ClusterType:
		return r.s.groupCache(typeURL, group)
	default:
		return r.s.snaps // nothing else is served: the watch parks
	}
}

func (r router) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	return r.pick(req.GetTypeUrl(), req.GetNode()).CreateWatch(req, sub, ch)
}

func (r router) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return r.pick(req.GetTypeUrl(), req.GetNode()).CreateDeltaWatch(req, sub, ch)
}

func (r router) Fetch(ctx context.Context, req *cachev3.Request) (cachev3.Response, error) {
	return r.pick(req.GetTypeUrl(), req.GetNode()).Fetch(ctx, req)
}

// groupCache returns (creating on first use) the linear cache of one type
// for one group.
func (s *Server) groupCache(typeURL, group string) *cachev3.LinearCache {
	key := typeURL + " " + group
	s.gcMu.RLock()
	lc, ok := s.groupCaches[key]
	s.gcMu.RUnlock()
	if ok {
		return lc
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if lc, ok = s.groupCaches[key]; !ok {
		lc = cachev3.NewLinearCache(typeURL, cachev3.WithVersionPrefix(s.prefix), cachev3.WithLogger(s.cl))
		s.groupCaches[key] = lc
	}
	return lc
}

// diff compares resources with the hashes last applied: the new hashes,
// the resources whose content changed (with their encoding, which the EDS
// cache serves as is) and the names that are gone.
func diff(prev map[string]string, rs []types.Resource) (next map[string]string, changed []resourceChange, gone []string, err error) {
	next = make(map[string]string, len(rs))
	for _, r := range rs {
		n := cachev3.GetResourceName(r)
		b, err := cachev3.MarshalResource(r)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", n, err)
		}
		h := cachev3.HashResource(b)
		next[n] = h
		if prev[n] != h {
			changed = append(changed, resourceChange{name: n, version: h, encoded: b, res: r})
		}
	}
	for n := range prev {
		if _, ok := next[n]; !ok {
			gone = append(gone, n)
		}
	}
	return next, changed, gone, nil
}

// Register exposes ADS (SotW and delta) on g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Tracker exposes the per-client state and NACK records.
func (s *Server) Tracker() *Tracker { return s.tracker }

// Output is the last applied translation (nil before the first).
func (s *Server) Output() *translate.Output {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out
}

// Group is the node group a node is served as.
func (s *Server) Group(n *corev3.Node) string { return s.hash.ID(n) }

// Apply serves out: only types whose content changed get a new version,
// only changed ClusterLoadAssignments are pushed.
func (s *Server) Apply(ctx context.Context, out *translate.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	proxies := map[string]bool{}
	for g := range out.Groups {
		if id, ok := cutPrefix(g, translate.ProxyGroup("")); ok {
			proxies[id] = true
		}
	}
	// EDS first, so a new cluster's endpoints are there when CDS names it.
	cla := make([]types.Resource, 0, len(out.Endpoints))
	for _, c := range out.Endpoints {
		cla = append(cla, c)
	}
	newHash, upd, del, err := diff(s.edsHash, cla)
	if err != nil {
		return fmt.Errorf("endpoints: %w", err)
	}
	if len(upd) > 0 || len(del) > 0 {
		s.tracker.markChange(resourcev3.EndpointType, now)
		s.eds.Update(upd, del)
		s.tracker.pushes(resourcev3.EndpointType, len(upd)+len(del))
	}
	s.edsHash = newHash

	s.hash.proxies.Store(&proxies)
	byCluster := maps.Clone(out.ByNodeCluster)
	if byCluster == nil {
		byCluster = map[string]string{}
	}
	s.hash.byCluster.Store(&byCluster)
	groups := maps.Clone(out.Groups)
	for key := range s.resHash {
		if g := key[strings.IndexByte(key, ' ')+1:]; groups[g] == nil {
			groups[g] = &translate.Group{} // removed proxy: serve nothing
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	sort.Strings(names)
	for _, name := range names {
		g := groups[name]
		if name != translate.GroupHDS {
			for i, t := range snapshotTypes[:3] {
				rs := [][]types.Resource{g.Listeners, g.Routes, g.Clusters}[i]
				key := t.url + " " + name
				next, upd, del, err := diff(s.resHash[key], rs)
				if err != nil {
					return fmt.Errorf("group %s: %w", name, err)
				}
				if len(upd) > 0 || len(del) > 0 {
					s.tracker.markChange(t.url, now)
					byName := make(map[string]types.Resource, len(upd))
					for _, c := range upd {
						byName[c.name] = c.res
					}
					if err := s.groupCache(t.url, name).UpdateResources(byName, del); err != nil {
						return fmt.Errorf("group %s: %w", name, err)
					}
					s.tracker.pushes(t.url, len(upd)+len(del))
				}
				s.resHash[key] = next
			}
			continue
		}
		snap := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
		var eds []types.Resource
		if name == translate.GroupHDS {
			eds = out.GroupEndpoints(name)
		}
		var vers [4]string
		for i, t := range snapshotTypes {
			rs := [][]types.Resource{g.Listeners, g.Routes, g.Clusters, eds}[i]
			var known map[string]string
			if t.idx == types.Endpoint {
				known = s.edsHash // hashed above: the same CLAs
			}
			v, vm, err := typeVersion(rs, known)
			if err != nil {
				return fmt.Errorf("group %s: %w", name, err)
			}
			vers[i] = v
			snap.Resources[t.idx] = cachev3.NewResources(v, rs)
			snap.VersionMap[t.url] = vm
		}
		for _, t := range []types.ResponseType{types.Secret, types.Runtime, types.ScopedRoute, types.ExtensionConfig, types.RateLimitConfig, types.VirtualHost} {
			snap.Resources[t] = cachev3.NewResources("", nil)
		}
		for i := 0; i < int(types.UnknownType); i++ {
			if u, err := cachev3.GetResponseTypeURL(types.ResponseType(i)); err == nil {
				if _, ok := snap.VersionMap[u]; !ok {
					snap.VersionMap[u] = map[string]string{}
				}
			}
		}
		old, had := s.versions[name]
		if had && old == vers {
			continue
		}
		for i, t := range snapshotTypes {
			if !had || old[i] != vers[i] {
				s.tracker.markChange(t.url, now)
			}
		}
		if err := s.snaps.SetSnapshot(ctx, name, snap); err != nil {
			return fmt.Errorf("group %s: %w", name, err)
		}
		s.versions[name] = vers
	}
	s.out = out
	s.log.Debug("config applied", "took", time.Since(now))
	return nil
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

func resourceHash(r types.Resource) (string, error) {
	b, err := cachev3.MarshalResource(r)
	if err != nil {
		return "", err
	}
	return cachev3.HashResource(b), nil
}

// typeVersion is a content hash of one type's resources: equal content
// gives an equal version, so an unchanged type is never re-pushed (even
// across restarts), and the per-resource hashes serve delta.
// known holds hashes already computed, by name.
func typeVersion(rs []types.Resource, known map[string]string) (string, map[string]string, error) {
	vm := make(map[string]string, len(rs))
	names := make([]string, 0, len(rs))
	for _, r := range rs {
		n := cachev3.GetResourceName(r)
		h, ok := known[n]
		if !ok {
			var err error
			if h, err = resourceHash(r); err != nil {
				return "", nil, err
			}
		}
		vm[n] = h
		names = append(names, n)
	}
	sort.Strings(names)
	sum := sha256.New()
	for _, n := range names {
		sum.Write([]byte(n))
		sum.Write([]byte{0})
		sum.Write([]byte(vm[n]))
		sum.Write([]byte{0})
	}
	return hex.EncodeToString(sum.Sum(nil))[:16], vm, nil
}

// nodeHash maps a node to its group: HDS replicas by metadata role, model
// proxies by id (or, for replicas with their own ids, by node cluster),
// everyone else to the proxyless mesh group.
type nodeHash struct {
	proxies   atomic.Pointer[map[string]bool]
	byCluster atomic.Pointer[map[string]string]
}

func (h *nodeHash) ID(n *corev3.Node) string {
	if n == nil {
		return translate.GroupMesh
	}
	role := n.GetMetadata().GetFields()["role"].GetStringValue()
	if role == "hds" {
		return translate.GroupHDS
	}
	if (*h.proxies.Load())[n.GetId()] {
		return translate.ProxyGroup(n.GetId())
	}
	if id, ok := (*h.byCluster.Load())[translate.NodeClusterKey(role, n.GetCluster())]; ok && role != "" && (*h.proxies.Load())[id] {
		return translate.ProxyGroup(id)
	}
	return translate.GroupMesh
}

// cacheLogger routes go-control-plane's logs to slog (its default is silent,
// which hides "not responding" conditions).
type cacheLogger struct{ log *slog.Logger }

// Formatting happens only when the level is on: go-control-plane logs
// per request at debug with whole subscription maps as arguments, which
// fmt sorts and prints (a third of the server's CPU in a 1,000-client
// push when formatted unconditionally).
func (l cacheLogger) logf(level slog.Level, f string, a []any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, fmt.Sprintf(f, a...))
	}
}

func (l cacheLogger) Debugf(f string, a ...any) { l.logf(slog.LevelDebug, f, a) }
func (l cacheLogger) Infof(f string, a ...any)  { l.logf(slog.LevelDebug, f, a) }
func (l cacheLogger) Warnf(f string, a ...any)  { l.logf(slog.LevelWarn, f, a) }
func (l cacheLogger) Errorf(f string, a ...any) { l.logf(slog.LevelError, f, a) }
