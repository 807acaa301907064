package redisbackend

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// TestSentinelFailover: a master with one replica, watched by a real
// Sentinel. The master is SIGKILLed; Sentinel promotes the replica and the
// backend follows it by itself (go-redis's failover client learns the new
// master from the Sentinel), so checks succeed again without a restart.
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a Sentinel failover")
	}
	bin, err := redistest.Binary()
	if err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	master := redistest.Start(t)
	replica := redistest.StartWith(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	// Sentinel discovers replicas from the master's INFO: start it once the
	// replica is linked, so the failover has a candidate from the start.
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	defer rc.Close()
	waitUntil(t, 30*time.Second, "the replica to link to its master", func() bool {
		info, err := rc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	// Low timeouts: declared down after 1 s, a failed failover retried after 5 s.
	cfg := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"+
		"sentinel parallel-syncs mymaster 1\n", port, dir, master.Port)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel", "--logfile", filepath.Join(dir, "sentinel.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Skipf("redis-server --sentinel: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sentinelLog := func() string { b, _ := os.ReadFile(filepath.Join(dir, "sentinel.log")); return string(b) }
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sentinel log:\n%s", sentinelLog())
		}
	})
	sc := redis.NewSentinelClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port)})
	defer sc.Close()
	waitUntil(t, 30*time.Second, "the Sentinel to know the replica", func() bool {
		rs, err := sc.Replicas(ctx, "mymaster").Result()
		return err == nil && len(rs) == 1
	})

	client, cluster, err := NewClient(ClientConfig{Type: "sentinel", Addrs: []string{"127.0.0.1:" + strconv.Itoa(port)},
		MasterName: "mymaster", PoolSize: 2, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Client: client, Cluster: cluster, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); client.Close() })

	it := []limiter.Item{{Key: limiter.Key("f:", rules.FixedWindow, time.Hour, "d", "k", "v"), Unit: time.Hour, Limit: 1000, Hits: 1, Enforce: limiter.Enforced}}
	res := make([]limiter.Result, 1)
	// One fixed "now" for every check: the counter stays in one window even
	// when the test crosses an hour boundary (it did once in CI at 20:00).
	now := time.Now()
	check := func() error { return r.Check(ctx, now, it, res) }
	waitUntil(t, 20*time.Second, "a check through the Sentinel", func() bool { return check() == nil })
	for i := 0; i < 5; i++ {
		if err := check(); err != nil {
			t.Fatalf("check %d before the failover: %v", i, err)
		}
	}
	before := 1000 - res[0].Remaining // hits counted so far (≥ 6)
	// The replica has the counter before the master dies (replication is
	// asynchronous: wait for it rather than assume it).
	wkey := limiter.WindowKey(it[0].Key, limiter.WindowStart(now, time.Hour))
	waitUntil(t, 10*time.Second, "the counter to reach the replica", func() bool {
		v, err := rc.Get(ctx, wkey).Int()
		return err == nil && uint32(v) == before
	})

	master.Kill()
	killed := time.Now()
	var failures int
	waitUntil(t, 60*time.Second, "checks to succeed again after the master was killed", func() bool {
		if err := check(); err != nil {
			failures++
			if failures%20 == 1 {
				t.Logf("check after the kill: %v", err)
			}
			return false
		}
		return true
	})
	recovered := time.Since(killed)
	t.Logf("master killed: %d failed checks, answering again after %v", failures, recovered.Round(time.Millisecond))

	// Sentinel now names the old replica as master, and the counter went on
	// from what the replica held.
	addr, err := sc.GetMasterAddrByName(ctx, "mymaster").Result()
	if err != nil || len(addr) != 2 || addr[1] != strconv.Itoa(replica.Port) {
		t.Fatalf("sentinel master after failover = %v, %v; want the replica's port %d\n%s", addr, err, replica.Port, sentinelLog())
	}
	v, err := rc.Get(ctx, wkey).Int()
	if err != nil || uint32(v) != before+1 {
		t.Fatalf("counter on the promoted replica = %d, %v; want %d (the %d hits before the kill plus the one after)", v, err, before+1, before)
	}
}

func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
