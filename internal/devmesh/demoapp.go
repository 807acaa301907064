package devmesh

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// DemoApp is the upstream service of the local mesh: every path answers 200
// with a JSON echo; /healthz answers 200, or 503 after POST /fail until POST
// /recover, so a person can watch delegated health checks at work.
type DemoApp struct {
	Name string
	Zone string

	failing atomic.Bool
	served  atomic.Int64
	probes  atomic.Int64
}

// ServeHTTP implements http.Handler.
func (d *DemoApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz":
		d.probes.Add(1)
		if d.failing.Load() {
			http.Error(w, d.Name+" is failing (POST /recover to heal)", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
		return
	case r.URL.Path == "/fail" && r.Method == http.MethodPost:
		d.failing.Store(true)
		w.Write([]byte(d.Name + " now fails its health check\n"))
		return
	case r.URL.Path == "/recover" && r.Method == http.MethodPost:
		d.failing.Store(false)
		w.Write([]byte(d.Name + " healthy again\n"))
		return
	}
	d.served.Add(1)
	hdr := map[string]string{}
	for k, v := range r.Header {
		if len(v) > 0 {
			hdr[k] = v[0]
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"service": d.Name, "zone": d.Zone, "method": r.Method, "host": r.Host,
		"path": r.URL.RequestURI(), "headers": hdr, "served": d.served.Load(), "health_probes": d.probes.Load(),
	})
}

// Serve runs the app on addr until ctx ends.
func (d *DemoApp) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
