package redisbackend

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// TestSentinel runs the backend through a real Redis Sentinel (redis-server
// --sentinel) that monitors a private master.
func TestSentinel(t *testing.T) {
	bin, err := redistest.Binary()
	if err != nil {
		t.Skip(err)
	}
	master := redistest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n", port, dir, master.Port)), 0o644)
	cmd := exec.Command(bin, conf, "--sentinel", "--logfile", filepath.Join(dir, "sentinel.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Skipf("redis-server --sentinel: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	client, cluster, err := NewClient(ClientConfig{Type: "sentinel", Addrs: []string{"127.0.0.1:" + strconv.Itoa(port)},
		MasterName: "mymaster", PoolSize: 2, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Client: client, Cluster: cluster, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); client.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for r.Ping(context.Background()) != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "sentinel.log"))
			t.Fatalf("no master through the sentinel: %v\n%s", r.Ping(context.Background()), log)
		}
		time.Sleep(25 * time.Millisecond)
	}
	it := []limiter.Item{{Key: limiter.Key("s:", rules.FixedWindow, time.Hour, "d", "k", "v"), Unit: time.Hour, Limit: 2, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	now := time.Now()
	for i, want := range []uint32{1, 0} {
		if err := r.Check(context.Background(), now, it, res); err != nil || res[0].Remaining != want {
			t.Fatalf("check %d via sentinel: %v %+v", i, err, res[0])
		}
	}
	// The counter really is on the master.
	if v, err := master.Do(context.Background(), "GET", limiter.WindowKey(it[0].Key, limiter.WindowStart(now, time.Hour))); err != nil || v != "2" {
		t.Fatalf("master counter = %q, %v", v, err)
	}
	if _, _, err := NewClient(ClientConfig{Type: "sentinel"}); err == nil {
		t.Fatal("sentinel without addresses accepted")
	}
}
