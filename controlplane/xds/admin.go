package xds

import (
	"encoding/json"
	"net/http"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Mux is where admin pages are added (the shared admin server).
type Mux interface {
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// RegisterAdmin adds /config_dump and /clients.
func (s *Server) RegisterAdmin(m Mux) {
	m.HandleFunc("GET /config_dump", s.serveConfigDump)
	m.HandleFunc("GET /clients", s.serveClients)
}

// serveConfigDump: ?node=ID (optionally &role=hds) or ?group=NAME; without
// either it lists the groups.
func (s *Server) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	out := s.Output()
	if out == nil {
		http.Error(w, "no model loaded yet", http.StatusServiceUnavailable)
		return
	}
	group := r.URL.Query().Get("group")
	if node := r.URL.Query().Get("node"); node != "" {
		n := &corev3.Node{Id: node}
		if role := r.URL.Query().Get("role"); role != "" {
			n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue(role)}}
		}
		group = s.Group(n)
	}
	if group == "" {
		groups := make([]string, 0, len(out.Groups))
		for g := range out.Groups {
			groups = append(groups, g)
		}
		writeJSON(w, map[string]any{"groups": groups, "hint": "add ?node=ID (and &role=hds for HDS) or ?group=NAME"})
		return
	}
	if _, ok := out.Groups[group]; !ok {
		http.Error(w, "unknown group "+group, http.StatusNotFound)
		return
	}
	b, err := out.Dump(group)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Sidemesh-Group", group)
	_, _ = w.Write(b)
}

func (s *Server) serveClients(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]any{"clients": s.tracker.Clients(), "nacks": s.tracker.NACKs()})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
