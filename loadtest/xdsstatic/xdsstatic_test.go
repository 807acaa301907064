package xdsstatic

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testbin"
	"github.com/sidemesh/sidemesh/loadtest/harness"
	"github.com/sidemesh/sidemesh/loadtest/harness/harnesstest"
	"github.com/sidemesh/sidemesh/loadtest/httpload"
)

func TestSnapshotValidation(t *testing.T) {
	if _, err := Snapshot("1", 8080, "127.0.0.1:9000"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"nohost", "127.0.0.1:0", "127.0.0.1:x"} {
		if _, err := Snapshot("1", 8080, bad); err == nil {
			t.Errorf("upstream %q accepted", bad)
		}
	}
}

// The real proxy binary configured by this server routes to the built-in
// upstream, and a short http run through it succeeds.
func TestRealProxyRoutesToUpstream(t *testing.T) {
	proxyBin := testbin.Build(t, "./proxy/cmd/proxy")
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &httpload.Upstream{}
	us := httpload.NewServer(up)
	go us.Serve(upLn)
	defer us.Close()

	listen, _ := harness.FreeAddr()
	_, lps, _ := net.SplitHostPort(listen)
	lp, _ := strconv.Atoi(lps)
	snap, err := Snapshot("1", uint32(lp), upLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gs, err := NewServer(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	adsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(adsLn)
	defer gs.Stop()

	admin, _ := harness.FreeAddr()
	cmd := exec.Command(proxyBin, "--node-id", "lt-test", "--cluster", "lt", "--xds-addr", adsLn.Addr().String(), "--admin-addr", admin)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	url := "http://" + listen + "/x"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(body) == "hello, world\n" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy never routed %s to the upstream (last err %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, r, stderr := harnesstest.Exec(t, httpload.Spec(), "--url", url, "--concurrency", "4", "--requests", "200", "--duration", "30s",
		"--target-pid", strconv.Itoa(cmd.Process.Pid))
	if code != 0 || r.Outcomes["200"] != 200 || r.Cost == nil {
		t.Fatalf("exit %d outcomes %v cost %+v: %s", code, r.Outcomes, r.Cost, stderr)
	}
}
