package replica

import (
	"slices"
	"sync"

	"github.com/sidemesh/sidemesh/services/hds/catalog"
	"github.com/sidemesh/sidemesh/services/hds/server"
)

// watcher is one HealthFeed subscriber. Updates queue in a bounded channel;
// a watcher that falls behind is dropped and reconnects for a snapshot,
// rather than slowing the replica.
type watcher struct {
	clusters map[string]bool
	ch       chan server.FeedUpdate
	once     sync.Once
}

func (w *watcher) wants(c string) bool { return len(w.clusters) == 0 || w.clusters[c] }

// offer queues u (filtered); false means the watcher is full and closed.
func (w *watcher) offer(u server.FeedUpdate) bool {
	var f server.FeedUpdate
	for _, v := range u.Changed {
		if w.wants(v.Key.Cluster) {
			f.Changed = append(f.Changed, v)
		}
	}
	for _, k := range u.Removed {
		if w.wants(k.Cluster) {
			f.Removed = append(f.Removed, k)
		}
	}
	if len(f.Changed)+len(f.Removed) == 0 {
		return true
	}
	select {
	case w.ch <- f:
		return true
	default:
		w.close()
		return false
	}
}

func (w *watcher) close() { w.once.Do(func() { close(w.ch) }) }

// Watch implements server.FeedSource.
func (r *Replica) Watch(subscriber string, clusters []string) ([]server.EndpointVerdict, <-chan server.FeedUpdate, func()) {
	w := &watcher{clusters: map[string]bool{}, ch: make(chan server.FeedUpdate, 256)}
	for _, c := range clusters {
		w.clusters[c] = true
	}
	r.mu.Lock()
	snap := make([]server.EndpointVerdict, 0, len(r.verdicts))
	for _, v := range r.verdicts {
		if w.wants(v.Key.Cluster) {
			snap = append(snap, v)
		}
	}
	r.subs[w] = struct{}{}
	r.mu.Unlock()
	slices.SortFunc(snap, func(a, b server.EndpointVerdict) int { return a.Key.Compare(b.Key) })
	r.log.Info("health feed watcher subscribed", "subscriber", subscriber, "clusters", clusters)
	return snap, w.ch, func() {
		r.mu.Lock()
		delete(r.subs, w)
		r.mu.Unlock()
		w.close()
	}
}

// Verdicts returns the current verdicts, sorted.
func (r *Replica) Verdicts() []server.EndpointVerdict {
	r.mu.Lock()
	out := make([]server.EndpointVerdict, 0, len(r.verdicts))
	for _, v := range r.verdicts {
		out = append(out, v)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b server.EndpointVerdict) int { return a.Key.Compare(b.Key) })
	return out
}

// Verdict returns one endpoint's verdict.
func (r *Replica) Verdict(k catalog.EndpointKey) (server.EndpointVerdict, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.verdicts[k]
	return v, ok
}
