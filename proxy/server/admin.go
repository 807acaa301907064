package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// XDSStatus is what /config_dump shows about the xDS client.
type XDSStatus func() any

// ConfigDump serves /config_dump: the accepted resources as JSON, like
// Envoy's, plus the xDS client's state.
func (p *Proxy) ConfigDump(status XDSStatus) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		snap := p.Snapshot()
		res := snap.Resources
		out := map[string]any{}
		if status != nil {
			out["xds"] = status()
		}
		out["applied"] = snap.Applied.UTC().Format(time.RFC3339Nano)
		out["listeners"] = dumpMap(res.Listeners)
		out["routes"] = dumpMap(res.Routes)
		out["clusters"] = dumpMap(res.Clusters)
		out["endpoints"] = dumpMap(res.Endpoints)
		out["bound_listeners"] = p.ListenerAddrs()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	}
}

// Clusters serves /clusters in Envoy's text form:
// cluster::host::stat::value, one per line.
func (p *Proxy) Clusters(w http.ResponseWriter, r *http.Request) {
	snap := p.Snapshot()
	names := make([]string, 0, len(snap.Clusters))
	for n := range snap.Clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	now := time.Now().UnixNano()
	for _, n := range names {
		c := snap.Clusters[n]
		hs := c.Hosts()
		fmt.Fprintf(w, "%s::default_priority::max_requests::%d\n", n, c.MaxRequests())
		for _, h := range hs.All {
			flags := "healthy"
			if !h.Healthy() {
				flags = "/failed_eds_health"
			}
			if h.Ejected(now) {
				flags = "/failed_outlier_check"
			}
			total, errs := h.Stats()
			fmt.Fprintf(w, "%s::%s::health_flags::%s\n", n, h.Addr, flags)
			fmt.Fprintf(w, "%s::%s::eds_health_status::%s\n", n, h.Addr, h.Health)
			fmt.Fprintf(w, "%s::%s::weight::%d\n", n, h.Addr, h.Weight)
			fmt.Fprintf(w, "%s::%s::zone::%s\n", n, h.Addr, h.Zone)
			fmt.Fprintf(w, "%s::%s::rq_active::%d\n", n, h.Addr, h.Active())
			fmt.Fprintf(w, "%s::%s::rq_total::%d\n", n, h.Addr, total)
			fmt.Fprintf(w, "%s::%s::rq_error::%d\n", n, h.Addr, errs)
		}
	}
}

// dumpMap renders resources as JSON, sorted by name.
func dumpMap[T proto.Message](m map[string]T) []json.RawMessage {
	var l []json.RawMessage
	for _, n := range sortedNames(m) {
		if b, err := protojson.Marshal(m[n]); err == nil {
			l = append(l, b)
		}
	}
	return l
}
