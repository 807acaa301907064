// Package replica is one HDS replica: it joins the ring, takes the catalog
// of clusters to check, assigns checkers to endpoints, serves HDS sessions,
// turns reports into gossiped votes and votes into verdicts.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/services/hds/assign"
	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/server"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// Config configures a replica.
type Config struct {
	// K checkers per endpoint.
	K int
	// LoadFactor caps a proxy's checks at LoadFactor × mean (0: no cap).
	LoadFactor float64
	// MaxPerProxy is a hard ceiling on one proxy's checks (0: none).
	MaxPerProxy int
	// ReportInterval is what proxies are told to report at.
	ReportInterval time.Duration
	// StaleAfter: a proxy silent this long has stale votes (default 3 ×
	// ReportInterval).
	StaleAfter time.Duration
	// ReassignAfter: a stale proxy's work moves after this much more
	// silence (default 10 × ReportInterval).
	ReassignAfter time.Duration
	Verdict       verdict.Config
	// TombstoneTTL is how long tombstones are kept (default 10 min).
	TombstoneTTL time.Duration
	Ring         ring.Config
	Log          *slog.Logger
}

// Replica implements server.Hub and server.FeedSource.
type Replica struct {
	cfg   Config
	log   *slog.Logger
	ring  *ring.Ring
	state *ring.State
	met   *metrics

	dirty      chan struct{}
	stopCh     chan struct{}
	seq        atomic.Uint64
	lastAssign atomic.Int64 // ns the last assignment took

	snap atomic.Pointer[index]

	mu       sync.Mutex
	sessions map[string]*session
	asg      *assign.Result
	asgKey   string // what the current assignment was computed from
	verdicts map[catalog.EndpointKey]server.EndpointVerdict
	suspects []string
	subs     map[*watcher]struct{}
	ready    bool
}

// index is a catalog snapshot with lookups by endpoint key string.
type index struct {
	snap *catalog.Snapshot
	eps  map[string]epInfo
}

type epInfo struct {
	ep      catalog.Endpoint
	cluster *catalog.Cluster
}

func newIndex(s *catalog.Snapshot) *index {
	ix := &index{snap: s, eps: map[string]epInfo{}}
	for i := range s.Clusters {
		c := &s.Clusters[i]
		for _, e := range c.Endpoints {
			ix.eps[e.Key.String()] = epInfo{ep: e, cluster: c}
		}
	}
	return ix
}

// New starts the replica's ring membership. Call Run to serve.
func New(cfg Config) (*Replica, error) {
	if cfg.K <= 0 {
		return nil, fmt.Errorf("checkers per endpoint must be at least 1, got %d", cfg.K)
	}
	if cfg.ReportInterval <= 0 {
		return nil, fmt.Errorf("report interval must be positive, got %v", cfg.ReportInterval)
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 3 * cfg.ReportInterval
	}
	if cfg.ReassignAfter <= 0 {
		cfg.ReassignAfter = 10 * cfg.ReportInterval
	}
	if cfg.TombstoneTTL <= 0 {
		cfg.TombstoneTTL = 10 * time.Minute
	}
	if cfg.Verdict.Rule == "" {
		cfg.Verdict = verdict.DefaultConfig()
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Replica{
		cfg: cfg, log: log, state: ring.NewState(),
		dirty: make(chan struct{}, 1), stopCh: make(chan struct{}),
		sessions: map[string]*session{}, verdicts: map[catalog.EndpointKey]server.EndpointVerdict{},
		subs: map[*watcher]struct{}{},
	}
	r.snap.Store(newIndex(&catalog.Snapshot{}))
	r.met = newMetrics(r)
	rc := cfg.Ring
	rc.OnChange = r.Kick
	if rc.Log == nil {
		rc.Log = log
	}
	rg, err := ring.Start(rc, r.state)
	if err != nil {
		return nil, err
	}
	r.ring = rg
	return r, nil
}

// Name is the replica's ring name.
func (r *Replica) Name() string { return r.cfg.Ring.Name }

// ReplicaName implements server.FeedSource.
func (r *Replica) ReplicaName() string { return r.Name() }

// Ring exposes the ring (gossip address, members, stats).
func (r *Replica) Ring() *ring.Ring { return r.ring }

// SetCatalog replaces the clusters to check.
func (r *Replica) SetCatalog(s *catalog.Snapshot) {
	r.snap.Store(newIndex(s))
	r.mu.Lock()
	r.ready = true
	r.mu.Unlock()
	r.Kick()
}

// Ready reports whether the replica has a catalog.
func (r *Replica) Ready(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ready {
		return errors.New("no clusters received from the catalog source yet")
	}
	return nil
}

// Kick asks for a recompute; it never blocks.
func (r *Replica) Kick() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// Run recomputes on changes and runs the periodic sweeps until ctx ends,
// then leaves the ring and ends every session.
func (r *Replica) Run(ctx context.Context) error {
	ringDone := make(chan struct{})
	go func() { _ = r.ring.Run(ctx); close(ringDone) }()
	tick := time.NewTicker(r.cfg.ReportInterval)
	defer tick.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			r.stop(true)
			<-ringDone
			return nil
		case <-r.stopCh:
			<-ringDone
			return nil
		case <-tick.C:
			r.sweep()
			r.recompute()
		case <-gc.C:
			members := map[string]bool{}
			for _, m := range r.ring.Members() {
				members[m] = true
			}
			r.state.GC(r.cfg.TombstoneTTL, func(rep string) bool { return members[rep] })
		case <-r.dirty:
			// Coalesce bursts of gossip into one recompute; a fleet whose
			// assignment takes long to compute waits longer, so it does not
			// spend its time recomputing for every joining proxy.
			t := time.NewTimer(min(max(20*time.Millisecond, 2*time.Duration(r.lastAssign.Load())), 2*time.Second))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			select {
			case <-r.dirty:
			default:
			}
			r.recompute()
		}
	}
}

// Kill stops the replica as a crash would: no leave message, sessions cut.
// For tests.
func (r *Replica) Kill() {
	r.ring.Kill()
	r.stop(false)
}

func (r *Replica) stop(leave bool) {
	r.mu.Lock()
	sessions := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	subs := r.subs
	r.subs = map[*watcher]struct{}{}
	r.mu.Unlock()
	for w := range subs {
		w.close()
	}
	for _, s := range sessions {
		s.end(leave)
	}
	if leave {
		if err := r.ring.Leave(2 * time.Second); err != nil {
			r.log.Warn("ring leave", "err", err)
		}
	}
	select {
	case <-r.stopCh:
	default:
		close(r.stopCh)
	}
}

// eligible returns the proxies whose votes are fresh (connected to a live
// replica, reporting) and those that may be given work: a proxy that went
// silent keeps its work for ReassignAfter, so a replica or proxy starved of
// CPU for a few seconds does not move work back and forth.
func (r *Replica) eligible() (fresh, assignable map[string]ring.ProxyEntry, members []string) {
	members = r.ring.Members()
	alive := map[string]bool{}
	for _, m := range members {
		alive[m] = true
	}
	fresh, assignable = map[string]ring.ProxyEntry{}, map[string]ring.ProxyEntry{}
	grace := time.Now().Add(-r.cfg.ReassignAfter).UnixNano()
	for _, p := range r.state.Proxies() {
		if !p.Live || !alive[p.Replica] {
			continue
		}
		if !p.Stale {
			fresh[p.ID] = p
		}
		if !p.Stale || p.TS > grace {
			assignable[p.ID] = p
		}
	}
	return fresh, assignable, members
}

func (r *Replica) recompute() {
	ix := r.snap.Load()
	proxies, assignable, members := r.eligible()

	ps := make([]assign.Proxy, 0, len(assignable))
	for _, p := range assignable {
		ps = append(ps, assign.Proxy{ID: p.ID, Zone: p.Zone, Caps: p.Caps})
	}
	slices.SortFunc(ps, func(a, b assign.Proxy) int {
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	key := ix.snap.Version + fmt.Sprintf("|%p|", ix)
	for _, p := range ps {
		key += p.ID + "\x00" + p.Zone + "\x00" + string(rune(p.Caps)) + "\x01"
	}

	r.mu.Lock()
	prev := r.asg
	same := prev != nil && r.asgKey == key
	r.mu.Unlock()
	asg := prev
	if !same {
		eps := ix.snap.Endpoints()
		ts := make([]assign.Target, len(eps))
		for i, e := range eps {
			c := ix.eps[e.Key.String()].cluster
			ts[i] = assign.Target{Key: e.Key.String(), Zone: e.Zone(), Need: uint8(c.Protocol)}
		}
		start := time.Now()
		asg = assign.Compute(assign.Config{K: r.cfg.K, LoadFactor: r.cfg.LoadFactor, MaxPerProxy: r.cfg.MaxPerProxy}, ps, ts)
		r.met.assignSeconds.Observe(time.Since(start).Seconds())
		r.lastAssign.Store(int64(time.Since(start)))
		if prev != nil {
			moved := 0
			for k, now := range asg.ByTarget {
				if old, ok := prev.ByTarget[k]; ok {
					for _, p := range now {
						if !slices.Contains(old, p) {
							moved++
						}
					}
				}
			}
			r.met.reassignments.Add(float64(moved))
		}
	}

	// Votes → verdicts, counting only fresh checkers.
	votes := make(map[catalog.EndpointKey][]verdict.Vote, len(ix.eps))
	for _, e := range ix.eps {
		votes[e.ep.Key] = nil
	}
	r.state.EachVote(func(v ring.VoteEntry) {
		e, ok := ix.eps[v.Endpoint]
		if !ok {
			return
		}
		if _, fresh := proxies[v.Checker]; !fresh {
			return
		}
		votes[e.ep.Key] = append(votes[e.ep.Key], verdict.Vote{Checker: v.Checker, Status: verdict.Status(v.Status)})
	})
	results, suspects := verdict.Aggregate(r.cfg.Verdict, votes)

	now := time.Now()
	var upd server.FeedUpdate
	r.mu.Lock()
	r.asg, r.asgKey = asg, key
	r.suspects = suspects
	for k, res := range results {
		old, had := r.verdicts[k]
		if had && old.Verdict == res.Verdict && slices.Equal(old.Checkers, res.Checkers) && old.Reason == res.Reason {
			continue
		}
		since := now
		if had && old.Verdict == res.Verdict {
			since = old.Since
		} else if had || res.Verdict != verdict.Unknown {
			r.met.verdictChanges.WithLabelValues(res.Verdict.String()).Inc()
			if had {
				r.log.Info("verdict changed", "endpoint", k.String(), "from", old.Verdict, "to", res.Verdict, "reason", res.Reason)
			}
		}
		ev := server.EndpointVerdict{Key: k, Verdict: res.Verdict, Checkers: res.Checkers, Since: since, Reason: res.Reason}
		r.verdicts[k] = ev
		upd.Changed = append(upd.Changed, ev)
	}
	for k := range r.verdicts {
		if _, ok := results[k]; !ok {
			delete(r.verdicts, k)
			upd.Removed = append(upd.Removed, k)
		}
	}
	var counts [3]int
	for _, v := range r.verdicts {
		counts[min(int(v.Verdict), 2)]++
	}
	sessions := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	if len(upd.Changed)+len(upd.Removed) > 0 {
		for w := range r.subs {
			if !w.offer(upd) {
				delete(r.subs, w)
			}
		}
	}
	r.mu.Unlock()

	for _, s := range sessions {
		s.notify()
	}
	r.met.update(asg, assignable, members, len(sessions), suspects)
	for i, n := range counts {
		r.met.verdicts.WithLabelValues(verdict.Verdict(i).String()).Set(float64(n))
	}
}

// sweep marks local proxies stale when they stop reporting, and re-asserts
// local entries that an older writer's tombstone overwrote.
func (r *Replica) sweep() {
	r.mu.Lock()
	sessions := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	r.mu.Unlock()
	for _, s := range sessions {
		s.sweep()
	}
}

// assignment returns the current assignment.
func (r *Replica) assignment() *assign.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asg
}
