package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/controlplane/bootstrap"
	"github.com/sidemesh/sidemesh/internal/testbin"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestBinary runs bin/controlplane as a process on the example model.
func TestBinary(t *testing.T) {
	bin := testbin.Build(t, "./controlplane/cmd/controlplane")
	dir := t.TempDir()
	example, err := os.ReadFile("../../examples/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(model, example, 0o644); err != nil {
		t.Fatal(err)
	}
	admin := freeAddr(t)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--model", model, "--xds-addr", freeAddr(t), "--admin-addr", admin, "--hds-addr", freeAddr(t))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _ := get("http://" + admin + "/ready"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, body := get("http://" + admin + "/config_dump?node=ingress")
	if code != 200 || !strings.Contains(body, `"port_value": 18080`) || !strings.Contains(body, "envoy.filters.http.ratelimit") {
		t.Errorf("config_dump ingress: %d %.300s", code, body)
	}
	code, body = get("http://" + admin + "/config_dump?node=hds-1&role=hds")
	if code != 200 || !strings.Contains(body, `"/healthz"`) {
		t.Errorf("config_dump hds: %d %.300s", code, body)
	}
	if code, body := get("http://" + admin + "/metrics"); code != 200 || !strings.Contains(body, `sidemesh_controlplane_model_reloads_total{result="ok"} 1`) {
		t.Errorf("metrics: %d", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

func TestBinaryBadInput(t *testing.T) {
	bin := testbin.Build(t, "./controlplane/cmd/controlplane")
	model := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(model, []byte("services:\n  - name: a\n    endpoints: [{address: 10.0.0.1, port: 0}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--model", model, "--admin-addr", freeAddr(t), "--xds-addr", freeAddr(t)).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("want exit 2, got %v: %s", err, out)
	}
	if !strings.Contains(string(out), model+":3: services[0].endpoints[0].port: 0 is not a port") {
		t.Errorf("message: %s", out)
	}

	out, err = exec.Command(bin, "bootstrap", "--node-id", "web-sidecar", "--role", "sidecar", "--zone", "zone-a", "--hds-addr", "127.0.0.1:18082").Output()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(out)
	if err != nil {
		t.Fatalf("printed bootstrap does not parse strictly: %v\n%s", err, out)
	}
	if b.GetNode().GetId() != "web-sidecar" || b.GetHdsConfig() == nil {
		t.Errorf("bootstrap %v", b)
	}
	if err := exec.Command(bin, "bootstrap", "--role", "sidecar").Run(); err == nil {
		t.Error("bootstrap without --node-id succeeded")
	}
}
