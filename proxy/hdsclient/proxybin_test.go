package hdsclient

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	cpbootstrap "github.com/sidemesh/sidemesh/controlplane/bootstrap"
	"github.com/sidemesh/sidemesh/internal/testbin"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestProxyBinaryRunsHDSClient: bin/proxy started with --hds-addr runs the
// client: the HDS server sees its node, the assigned upstream is probed,
// reports say HEALTHY, and the admin page /hds shows the host. (No control
// plane is needed for this; the proxy keeps retrying xDS meanwhile.)
func TestProxyBinaryRunsHDSClient(t *testing.T) {
	testProxyBinaryHDS(t, func(hdsAddr, admin string) []string {
		return []string{"--node-id", "web-sidecar", "--cluster", "web", "--zone", "zone-a", "--role", "sidecar",
			"--xds-addr", deadAddr(t), "--hds-addr", hdsAddr, "--admin-addr", admin}
	})
}

// TestProxyBootstrapHDSConfig: the bootstrap the controlplane generates
// (controlplane/bootstrap, as `bin/controlplane bootstrap` prints it) is
// all bin/proxy needs to run HDS: its hds_config names a static cluster.
func TestProxyBootstrapHDSConfig(t *testing.T) {
	testProxyBinaryHDS(t, func(hdsAddr, admin string) []string {
		b, err := cpbootstrap.Build(cpbootstrap.Options{NodeID: "web-sidecar", Role: "sidecar", Cluster: "web", Zone: "zone-a",
			XDSAddr: deadAddr(t), HDSAddr: hdsAddr, AdminAddr: admin, Delta: true})
		if err != nil {
			t.Fatal(err)
		}
		y, err := cpbootstrap.YAML(b)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "bootstrap.yaml")
		if err := os.WriteFile(path, y, 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{"--bootstrap", path, "--admin-addr", admin}
	})
}

func testProxyBinaryHDS(t *testing.T, args func(hdsAddr, admin string) []string) {
	if testing.Short() {
		t.Skip("builds bin/proxy")
	}
	bin := testbin.Build(t, "./proxy/cmd/proxy")
	f, _ := startHDS(t, "127.0.0.1:0")
	up := newApp(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	f.spec = spec(100*time.Millisecond, clusterHC("web", httpCheck(), loc("zone-a", ep(t, upAddr))))
	admin := deadAddr(t)
	cmd := exec.Command(bin, args(addrOf(f), admin)...)
	logs := &syncBuf{}
	cmd.Stderr, cmd.Stdout = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("proxy exit: %v", err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("proxy did not exit on SIGTERM")
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	}()
	waitFor(t, "HEALTHY report from bin/proxy", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("proxy exited: %v\n%s", err, logs.String())
		default:
		}
		s, _ := statusOf(f.lastReport(), "web", "zone-a", upAddr)
		return s == corev3.HealthStatus_HEALTHY
	})
	f.mu.Lock()
	id := f.requests[0].GetNode().GetId()
	f.mu.Unlock()
	if id != "web-sidecar" {
		t.Fatalf("node id %q", id)
	}
	resp, err := http.Get("http://" + admin + "/hds")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(b.String(), upAddr) {
		t.Fatalf("/hds: %d %s", resp.StatusCode, b.String())
	}
}
