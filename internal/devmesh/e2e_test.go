package devmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/redistest"
)

// TestMeshEndToEnd brings up the topology of make run / docker-compose as
// real processes and checks the loop as a user sees it: routing through the
// ingress to both services, a rate limit producing 429s across two RLS
// replicas on one Redis, an upstream failing its health check and marked
// unhealthy at the ingress through HDS → controlplane → EDS, and an HDS
// replica killed without losing coverage.
func TestMeshEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	dir := t.TempDir()
	bin := binDir(t, dir)
	redis := redistest.Start(t)
	root, _ := filepath.Abs("../..")
	m := &Mesh{BinDir: bin, Self: filepath.Join(bin, "meshrun"), LogDir: filepath.Join(dir, "logs")}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := m.Start(ctx, Plan(Options{Root: root, RedisPort: redis.Port})); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Stop(30 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			for _, f := range []string{"controlplane", "ingress", "hds-2", "rls-1"} {
				b, _ := os.ReadFile(filepath.Join(dir, "logs", f+".log"))
				t.Logf("--- %s log (tail) ---\n%s", f, tail(string(b), 30))
			}
		}
	}()
	if s := m.Skipped(); len(s) > 0 {
		t.Fatalf("components not started: %v", s)
	}
	m.WaitReady(ctx, 90*time.Second, func(s string) { t.Log(s) })

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string, hdr ...string) (int, map[string]any) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:18080"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	eventually := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s", what, limit)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Routing: / → web, /api → api, each through its sidecar.
	eventually("ingress routes / to web", 90*time.Second, func() bool {
		code, body := get("/hello")
		return code == 200 && body["service"] == "web"
	})
	eventually("ingress routes /api to api", 30*time.Second, func() bool {
		code, body := get("/api/items")
		return code == 200 && body["service"] == "api"
	})

	// Rate limit: 5 per minute per x-user, shared by both RLS replicas.
	user := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	var codes []int
	for i := 0; i < 8; i++ {
		code, _ := get("/api/x", "x-user", user)
		codes = append(codes, code)
	}
	ok, limited := 0, 0
	for _, c := range codes {
		switch c {
		case 200:
			ok++
		case 429:
			limited++
		}
	}
	// A minute boundary may fall inside the burst: then up to 10 pass.
	if limited == 0 || ok < 5 || ok+limited != len(codes) {
		t.Fatalf("rate limit: codes %v, want 5 OK then 429s", codes)
	}

	// Health: web fails its check → unhealthy at the ingress via EDS; recovers.
	post := func(url string) {
		resp, err := client.Post(url, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	webUnhealthy := func() bool { return hostFlagged(ctx, client, "127.0.0.1:15000", "web", "127.0.0.1:15101") }
	post("http://127.0.0.1:18101/fail")
	eventually("web marked unhealthy at the ingress", 60*time.Second, webUnhealthy)
	post("http://127.0.0.1:18101/recover")
	eventually("web healthy again at the ingress", 60*time.Second, func() bool { return !webUnhealthy() })

	// An HDS replica dies: its proxies reconnect elsewhere and checks go on.
	if err := m.Kill("hds-1"); err != nil {
		t.Fatal(err)
	}
	post("http://127.0.0.1:18201/fail")
	eventually("api marked unhealthy with hds-1 dead", 90*time.Second, func() bool {
		return hostFlagged(ctx, client, "127.0.0.1:15000", "api", "127.0.0.1:15201")
	})
	post("http://127.0.0.1:18201/recover")
	eventually("api healthy again", 60*time.Second, func() bool {
		return !hostFlagged(ctx, client, "127.0.0.1:15000", "api", "127.0.0.1:15201")
	})
}

// hostFlagged reads the proxy's Envoy-style /clusters page and reports
// whether host of cluster carries a failure health flag.
func hostFlagged(ctx context.Context, c *http.Client, admin, cluster, host string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/clusters", nil)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, cluster+"::"+host+"::health_flags::") {
			return strings.Contains(line, "/failed_")
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
