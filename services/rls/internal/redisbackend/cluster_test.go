package redisbackend

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter/limitertest"
	"github.com/sidemesh/sidemesh/services/rls/internal/rules"
)

// startCluster starts a 3-master Redis Cluster on free ports, or skips when
// redis-server/redis-cli cannot build one here.
func startCluster(t *testing.T) []string {
	t.Helper()
	bin, err := redistest.Binary()
	if err != nil {
		t.Skip(err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli not installed")
	}
	var addrs []string
	for i := 0; i < 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		dir := t.TempDir()
		cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--save", "", "--appendonly", "no", "--dir", dir,
			"--logfile", filepath.Join(dir, "redis.log"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Skipf("starting cluster node: %v", err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range addrs {
		for {
			out, err := exec.Command(cli, "-h", "127.0.0.1", "-p", strings.Split(a, ":")[1], "ping").Output()
			if err == nil && strings.TrimSpace(string(out)) == "PONG" {
				break
			}
			if time.Now().After(deadline) {
				t.Skipf("cluster node %s never answered", a)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Skipf("redis-cli --cluster create: %v: %s", err, out)
	}
	for _, a := range addrs {
		for {
			out, _ := exec.Command(cli, "-h", "127.0.0.1", "-p", strings.Split(a, ":")[1], "cluster", "info").Output()
			if strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster never became ok: %s", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return addrs
}

func TestRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Redis Cluster")
	}
	addrs := startCluster(t)
	newRedis := func(t *testing.T) (*Redis, redis.UniversalClient) {
		client, cluster, err := NewClient(ClientConfig{Type: "cluster", Addrs: addrs, PoolSize: 4, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		r, err := New(Options{Client: client, Cluster: cluster, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); client.Close() })
		if err := r.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		return r, client
	}
	newB := func(t *testing.T) limiter.Backend { r, _ := newRedis(t); return r }
	limitertest.Run(t, newB)

	// Quota groups over real nodes: members in several slots (the refund
	// undoes the charged parts) and in one slot; counters read back.
	for _, oneSlot := range []bool{false, true} {
		r, client := newRedis(t)
		get := func(k string) string {
			v, err := client.Get(context.Background(), k).Result()
			if err != nil && err != redis.Nil {
				t.Fatalf("GET %s: %v", k, err)
			}
			return v
		}
		quotaGroupReadBack(t, r, get, fmt.Sprintf("clq%v:", oneSlot), oneSlot)
	}

	// Exactness under concurrency with keys spread over every node.
	b := newB(t)
	const keys, limit, callers, per = 12, 10, 24, 20
	var ok [keys]atomic.Int64
	var errs atomic.Int64
	var wg sync.WaitGroup
	slots := map[int]bool{}
	for k := 0; k < keys; k++ {
		slots[Slot(limiter.Key("cl:", rules.FixedWindow, time.Hour, "d", "k", fmt.Sprint(k)))] = true
	}
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			res := make([]limiter.Result, 2)
			for i := 0; i < per; i++ {
				k1, k2 := (c+i)%keys, (c+i+5)%keys
				items := []limiter.Item{
					{Key: limiter.Key("cl:", rules.FixedWindow, time.Hour, "d", "k", fmt.Sprint(k1)), Unit: time.Hour, Limit: limit, Hits: 1, Enforce: limiter.Enforced},
					{Key: limiter.Key("cl:", rules.FixedWindow, time.Hour, "d", "other", fmt.Sprint(k2)), Unit: time.Hour, Limit: 1 << 30, Hits: 1, Enforce: limiter.Enforced},
				}
				if err := b.Check(context.Background(), time.Now(), items, res); err != nil {
					errs.Add(1)
					continue
				}
				if !res[0].Over {
					ok[k1].Add(1)
				}
			}
		}(c)
	}
	wg.Wait()
	if errs.Load() > 0 {
		t.Fatalf("%d errors", errs.Load())
	}
	for k := range ok {
		if ok[k].Load() != limit {
			t.Errorf("key %d admitted %d, want exactly %d", k, ok[k].Load(), limit)
		}
	}
	t.Logf("%d keys over %d slots", keys, len(slots))
	// Rejected requests were refunded on the other slots: each "other"
	// counter holds exactly the admitted requests that carried it.
	var total int64
	for k := range ok {
		total += ok[k].Load()
	}
	var other int64
	for k := 0; k < keys; k++ {
		res := make([]limiter.Result, 1)
		it := []limiter.Item{{Key: limiter.Key("cl:", rules.FixedWindow, time.Hour, "d", "other", fmt.Sprint(k)), Unit: time.Hour, Limit: 1 << 30, Hits: 0, Enforce: limiter.Enforced}}
		if err := b.Check(context.Background(), time.Now(), it, res); err != nil {
			t.Fatal(err)
		}
		other += int64(1<<30 - res[0].Remaining)
	}
	if other != total {
		t.Fatalf("other counters hold %d hits, admitted requests %d: rejected requests were not refunded", other, total)
	}
}
