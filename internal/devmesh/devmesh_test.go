package devmesh

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testbin"
)

func TestDemoApp(t *testing.T) {
	app := &DemoApp{Name: "web", Zone: "zone-a"}
	srv := httptest.NewServer(app)
	defer srv.Close()
	get := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	post := func(path string) {
		resp, err := http.Post(srv.URL+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if c := get("/healthz"); c != 200 {
		t.Fatalf("healthz %d", c)
	}
	post("/fail")
	if c := get("/healthz"); c != 503 {
		t.Fatalf("healthz after fail %d", c)
	}
	if c := get("/anything"); c != 200 {
		t.Fatalf("traffic while failing health %d", c)
	}
	post("/recover")
	if c := get("/healthz"); c != 200 {
		t.Fatalf("healthz after recover %d", c)
	}
}

// make run's promise: it starts what exists, prints the table, and Ctrl-C
// leaves no process behind.
func TestMeshrunStartsAndStopsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	dir := t.TempDir()
	bin := binDir(t, dir)
	root, _ := filepath.Abs("../..")
	// Offset the ports so a live `make run` is not disturbed (kept below the
	// ephemeral range, 32768+, where outgoing connections take ports).
	cmd := exec.Command(filepath.Join(bin, "meshrun"), "--root", root, "--port-offset", "10000",
		"--log-dir", filepath.Join(dir, "logs"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	var pids []int
	inTable := false
	deadline := time.AfterFunc(3*time.Minute, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "PROCESS") {
			inTable = true
			continue
		}
		if inTable {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] == "skipped" {
				break
			}
			pid, err := strconv.Atoi(f[1])
			if err != nil || pid <= 0 {
				t.Fatalf("table row without pid: %q", line)
			}
			pids = append(pids, pid)
		}
	}
	if len(pids) < 3 {
		t.Fatalf("table listed %d processes, want at least redis and the two demo apps", len(pids))
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("pid %d from the table is not running", pid)
		}
	}
	// The demo apps answer through their offset ports.
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(18101+10000) + "/healthz")
	if err != nil {
		t.Fatalf("demo app web: %v", err)
	}
	resp.Body.Close()
	// The model's ports moved too: the offset ingress routes to the offset
	// web sidecar and app (the example routes / to web).
	ingress := "http://127.0.0.1:" + strconv.Itoa(18080+10000) + "/hello"
	routed := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(ingress)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(routed) {
			t.Fatalf("the offset ingress %s did not route to web within 90s (last: %v)", ingress, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	cmd.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, stdout)
	werr := make(chan error, 1)
	go func() { werr <- cmd.Wait() }()
	select {
	case err := <-werr:
		if err != nil {
			t.Fatalf("meshrun exit: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("meshrun did not stop within 90s of Ctrl-C")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			if ctx.Err() != nil {
				t.Fatalf("pid %d still alive after meshrun stopped", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// binDir builds every mesh binary and links them into dir/bin, the layout
// meshrun expects.
func binDir(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, pkg := range map[string]string{
		"meshrun": "./cmd/meshrun", "controlplane": "./controlplane/cmd/controlplane",
		"hds": "./services/hds/cmd/hds", "rls": "./services/rls/cmd/rls", "proxy": "./proxy/cmd/proxy",
	} {
		if err := os.Symlink(testbin.Build(t, pkg), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}
