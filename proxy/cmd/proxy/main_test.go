package main_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/sidemesh/sidemesh/internal/testbin"
	mt "github.com/sidemesh/sidemesh/proxy/internal/meshtest"
)

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  *strings.Builder
	mu   *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{}), out: &strings.Builder{}, mu: &sync.Mutex{}}
	p.cmd.Stdout = lockedWriter{p.mu, p.out}
	p.cmd.Stderr = lockedWriter{p.mu, p.out}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("process did not exit within %s", d)
		return -1
	}
}

func httpGet(url string) (int, string) {
	res, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func testMesh(port uint32, up *mt.Upstream) mt.Mesh {
	return mt.Mesh{Listeners: []types.Resource{mt.Listener("public", port, "r")}, Routes: []types.Resource{mt.RouteConfig("r", mt.RouteTo("/", "svc"))},
		Clusters: []types.Resource{mt.EDSCluster("svc")}, Endpoints: []types.Resource{mt.CLA("svc", mt.EP{U: up})}}
}

func TestBadFlagsExit2(t *testing.T) {
	bin := testbin.Build(t, "./proxy/cmd/proxy")
	for _, args := range [][]string{
		{"--admin-addr", "127.0.0.1:0"},
		{"--admin-addr", "127.0.0.1:0", "--node-id", "n", "--xds-addr", "nope"},
		{"--admin-addr", "127.0.0.1:0", "--node-id", "n", "--xds-addr", "127.0.0.1:1", "--role", "gateway"},
		{"--admin-addr", "127.0.0.1:0", "--bootstrap", "/nonexistent.yaml"},
		{"--admin-addr", "127.0.0.1:0", "--node-id", "n", "--xds-addr", "127.0.0.1:1", "--restart-from", "/nonexistent/proxy.sock"},
	} {
		p := start(t, bin, args...)
		if code := p.wait(t, 20*time.Second); code != 2 {
			t.Errorf("%v: exit %d, want 2; output:\n%s", args, code, p.output())
		}
		if args[len(args)-2] == "--restart-from" && !strings.Contains(p.output(), "--restart-from /nonexistent/proxy.sock") {
			t.Errorf("the hot restart error should name the flag and path:\n%s", p.output())
		}
	}
}

// TestHotRestartUnderLoad runs the real binary, checks the admin pages, then
// replaces it with a second process taking over the listening socket while
// clients keep sending: zero failed requests, both processes exit 0.
func TestHotRestartUnderLoad(t *testing.T) {
	bin := testbin.Build(t, "./proxy/cmd/proxy")
	cp := mt.StartCP(t)
	up := mt.StartUpstream(t, "up")
	port := mt.FreePort(t)
	cp.Push(t, testMesh(port, up))
	sock := filepath.Join(t.TempDir(), "restart.sock")
	adminA := mt.FreePort(t)
	boot := filepath.Join(t.TempDir(), "bootstrap.yaml")
	os.WriteFile(boot, []byte(fmt.Sprintf(`node: {id: test-node, cluster: test, locality: {zone: zone-a}}
dynamic_resources:
  ads_config: {api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]
`, strings.Split(cp.Addr, ":")[1])), 0o644)
	a := start(t, bin, "--bootstrap", boot, "--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminA),
		"--restart-socket", sock, "--drain-timeout", "10s")
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminA)
	mt.Eventually(t, "proxy A ready", func() bool { code, _ := httpGet(admin + "/ready"); return code == 200 })
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if code, _ := httpGet(url); code != 200 {
		t.Fatalf("through proxy: %d", code)
	}
	for path, want := range map[string]string{
		"/config_dump":      `"public": "127.0.0.1:`,
		"/clusters":         "svc::" + up.Addr + "::health_flags::healthy",
		"/stats/prometheus": `envoy_cluster_upstream_rq_total{envoy_cluster_name="svc",envoy_response_code_class="2"}`,
		"/metrics":          "envoy_http_downstream_rq_total",
		"/healthz":          "ok",
	} {
		if code, body := httpGet(admin + path); code != 200 || !strings.Contains(strings.ReplaceAll(body, `":"`, `": "`), want) {
			t.Errorf("%s: %d, want %q in:\n%.600s", path, code, want, body)
		}
	}

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for ctx.Err() == nil {
				res, err := c.Get(url)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint("status ", res.StatusCode))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	mt.Eventually(t, "load running", func() bool { return ok.Load() > 200 })
	// The same command line, admin address included: the successor takes
	// the admin socket over with the data listeners.
	b := start(t, bin, "--bootstrap", boot, "--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminA),
		"--restart-from", sock, "--restart-socket", sock, "--drain-timeout", "10s")
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("old process exit %d", code)
	}
	before := ok.Load()
	mt.Eventually(t, "load continues on the new process", func() bool { return ok.Load() > before+500 })
	cancel()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across the hot restart; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	t.Logf("hot restart: %d requests, 0 failures", ok.Load())
	if !strings.Contains(a.output(), "successor ready, draining") || !strings.Contains(b.output(), "took listeners") {
		t.Fatalf("handoff not logged")
	}
	// The old process is gone, so the admin port answering is the successor.
	if code, _ := httpGet(admin + "/ready"); code != 200 {
		t.Fatalf("admin /ready on the successor: %d", code)
	}
	if code, body := httpGet(admin + "/config_dump"); code != 200 || !strings.Contains(body, "127.0.0.1:") {
		t.Fatalf("admin /config_dump on the successor: %d %.300s", code, body)
	}
	// SIGTERM drains and exits 0.
	b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM exit %d", code)
	}
}
