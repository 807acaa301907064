package replica

import (
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/services/hds/ring"
)

// A proxy that went silent loses its vote at once but keeps its work for
// ReassignAfter; a proxy on a replica that left the ring loses both.
func TestStaleProxyKeepsWorkForGrace(t *testing.T) {
	h := startReplicas(t, 1, 2, testCatalog(4, []string{"zone-a"}))
	rep := h.nodes[0].rep
	now := time.Now()
	rep.state.MergeProxy(ring.ProxyEntry{ID: "fresh", Replica: rep.Name(), Live: true, TS: now.UnixNano()})
	rep.state.MergeProxy(ring.ProxyEntry{ID: "silent-recently", Replica: rep.Name(), Live: true, Stale: true, TS: now.UnixNano()})
	rep.state.MergeProxy(ring.ProxyEntry{ID: "silent-long", Replica: rep.Name(), Live: true, Stale: true, TS: now.Add(-rep.cfg.ReassignAfter - time.Second).UnixNano()})
	rep.state.MergeProxy(ring.ProxyEntry{ID: "orphan", Replica: "gone-replica", Live: true, TS: now.UnixNano()})
	rep.state.MergeProxy(ring.ProxyEntry{ID: "left", Replica: rep.Name(), Live: false, TS: now.UnixNano()})
	fresh, assignable, _ := rep.eligible()
	for id, want := range map[string][2]bool{
		"fresh": {true, true}, "silent-recently": {false, true}, "silent-long": {false, false},
		"orphan": {false, false}, "left": {false, false},
	} {
		_, f := fresh[id]
		_, a := assignable[id]
		if f != want[0] || a != want[1] {
			t.Errorf("%s: fresh=%v assignable=%v, want %v", id, f, a, want)
		}
	}
}
