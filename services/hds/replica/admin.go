package replica

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/sidemesh/sidemesh/services/hds/ring"
	"github.com/sidemesh/sidemesh/services/hds/verdict"
)

// AssignmentView is /assignments: proxy → endpoints.
type AssignmentView struct {
	Replica string            `json:"replica"`
	Members []string          `json:"members"`
	Cap     int               `json:"cap_per_proxy,omitempty"`
	Proxies []ProxyAssignment `json:"proxies"`
}

// ProxyAssignment is one proxy's work.
type ProxyAssignment struct {
	Proxy     string   `json:"proxy"`
	Replica   string   `json:"replica"`
	Zone      string   `json:"zone,omitempty"`
	Stale     bool     `json:"stale,omitempty"`
	Eligible  bool     `json:"eligible"`
	Endpoints []string `json:"endpoints"`
}

// EndpointView is one row of /endpoints.
type EndpointView struct {
	Endpoint string     `json:"endpoint"`
	Zone     string     `json:"zone,omitempty"`
	Checkers []string   `json:"checkers"`
	Votes    []VoteView `json:"votes"`
	Verdict  string     `json:"verdict"`
	Since    time.Time  `json:"since"`
	Reason   string     `json:"reason"`
}

// VoteView is one checker's vote.
type VoteView struct {
	Checker string    `json:"checker"`
	Status  string    `json:"status"`
	At      time.Time `json:"at"`
	Fresh   bool      `json:"fresh"`
}

// Assignments builds the /assignments view.
func (r *Replica) Assignments() AssignmentView {
	_, proxies, members := r.eligible()
	a := r.assignment()
	v := AssignmentView{Replica: r.Name(), Members: members}
	if a != nil {
		v.Cap = a.Cap
	}
	for _, p := range r.state.Proxies() {
		if !p.Live {
			continue
		}
		_, ok := proxies[p.ID]
		pa := ProxyAssignment{Proxy: p.ID, Replica: p.Replica, Zone: p.Zone, Stale: p.Stale, Eligible: ok, Endpoints: []string{}}
		if a != nil && a.ByProxy[p.ID] != nil {
			pa.Endpoints = a.ByProxy[p.ID]
		}
		v.Proxies = append(v.Proxies, pa)
	}
	slices.SortFunc(v.Proxies, func(x, y ProxyAssignment) int {
		if x.Proxy < y.Proxy {
			return -1
		}
		return 1
	})
	return v
}

// Endpoints builds the /endpoints view.
func (r *Replica) Endpoints() []EndpointView {
	proxies, _, _ := r.eligible()
	a := r.assignment()
	ix := r.snap.Load()
	var out []EndpointView
	for _, ev := range r.Verdicts() {
		k := ev.Key.String()
		row := EndpointView{Endpoint: k, Verdict: ev.Verdict.String(), Since: ev.Since, Reason: ev.Reason, Checkers: []string{}, Votes: []VoteView{}}
		if info, ok := ix.eps[k]; ok {
			row.Zone = info.ep.Zone()
		}
		if a != nil && a.ByTarget[k] != nil {
			row.Checkers = a.ByTarget[k]
		}
		out = append(out, row)
	}
	byEp := map[string][]VoteView{}
	r.state.EachVote(func(v ring.VoteEntry) {
		_, fresh := proxies[v.Checker]
		byEp[v.Endpoint] = append(byEp[v.Endpoint], VoteView{Checker: v.Checker, Status: verdict.Status(v.Status).String(), At: time.Unix(0, v.TS).UTC(), Fresh: fresh})
	})
	for i := range out {
		if vs := byEp[out[i].Endpoint]; vs != nil {
			slices.SortFunc(vs, func(x, y VoteView) int {
				if x.Checker < y.Checker {
					return -1
				}
				return 1
			})
			out[i].Votes = vs
		}
	}
	return out
}

// AdminHandlers returns the /assignments and /endpoints handlers.
func (r *Replica) AdminHandlers() map[string]http.HandlerFunc {
	js := func(f func() any) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(f())
		}
	}
	return map[string]http.HandlerFunc{
		"GET /assignments": js(func() any { return r.Assignments() }),
		"GET /endpoints":   js(func() any { return r.Endpoints() }),
	}
}
