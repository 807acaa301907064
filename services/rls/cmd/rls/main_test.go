package main

import (
	"context"
	"fmt"
	"io"
	"net"
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

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/internal/syncbuf"
	"github.com/sidemesh/sidemesh/internal/testbin"
	"github.com/sidemesh/sidemesh/services/rls/internal/limiter"
)

const e2eRules = `
domain: e2e
descriptors:
  - key: fixed
    rate_limit: {unit: day, requests_per_unit: 40}
  - key: sliding
    rate_limit: {unit: day, requests_per_unit: 40, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: day, requests_per_unit: 1, algorithm: token_bucket, burst: 30}
`

type proc struct {
	cmd    *exec.Cmd
	grpc   string
	admin  string
	client rlsv3.RateLimitServiceClient
	stderr *syncbuf.Buffer
	exited chan error
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func startRLS(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	return startRLSEnv(t, bin, nil, args...)
}

// startRLSEnv starts rls with extra environment variables (KEY=value).
func startRLSEnv(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{grpc: freeAddr(t), admin: freeAddr(t), stderr: &syncbuf.Buffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, append([]string{"--grpc-addr", p.grpc, "--admin-addr", p.admin, "--log-level", "debug"}, args...)...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("rls %s stderr:\n%s", p.grpc, p.stderr.String())
		}
	})
	waitFor(t, "rls /ready", func() bool {
		select {
		case err := <-p.exited:
			t.Fatalf("rls exited at start: %v\n%s", err, p.stderr.String())
		default:
		}
		code, _ := httpGet("http://" + p.admin + "/ready")
		return code == 200
	})
	cc, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p.client = rlsv3.NewRateLimitServiceClient(cc)
	return p
}

func request(domain, key, value string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: value}},
	}}}
}

func call(t *testing.T, p *proc, r *rlsv3.RateLimitRequest) *rlsv3.RateLimitResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := p.client.ShouldRateLimit(ctx, r)
	if err != nil {
		t.Fatalf("ShouldRateLimit on %s: %v", p.grpc, err)
	}
	return resp
}

func writeRules(t *testing.T, dir, name, content string) {
	t.Helper()
	// Write then rename, as editors and config tools do.
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestThreeReplicasExact runs three rls processes on one redis-server and
// hammers each limit from 30 concurrent callers spread over the replicas:
// exactly the limit (or the bucket's burst) is admitted, never more.
func TestThreeReplicasExact(t *testing.T) {
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	srv := redistest.Start(t)
	dir := t.TempDir()
	writeRules(t, dir, "e2e.yaml", e2eRules)
	var procs []*proc
	for i := 0; i < 3; i++ {
		// No local cache: every decision goes through Redis.
		procs = append(procs, startRLS(t, bin, "--rules", dir, "--backend", "redis", "--redis-url", srv.URL(), "--local-cache-size", "0", "--redis-timeout", "2s"))
	}
	for _, tc := range []struct {
		key  string
		want int
	}{{"fixed", 40}, {"sliding", 40}, {"bucket", 30}} {
		t.Run(tc.key, func(t *testing.T) {
			day := limiter.WindowStart(time.Now(), 24*time.Hour)
			const callers, attempts = 30, 4
			var ok, over, errs atomic.Int64
			var wg sync.WaitGroup
			for c := 0; c < callers; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					p := procs[c%len(procs)]
					for i := 0; i < attempts; i++ {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						resp, err := p.client.ShouldRateLimit(ctx, request("e2e", tc.key, "shared"))
						cancel()
						switch {
						case err != nil:
							errs.Add(1)
						case resp.GetOverallCode() == rlsv3.RateLimitResponse_OK:
							ok.Add(1)
						default:
							over.Add(1)
						}
					}
				}(c)
			}
			wg.Wait()
			if limiter.WindowStart(time.Now(), 24*time.Hour) != day {
				t.Skip("the test crossed a UTC day boundary; counts span two windows")
			}
			if errs.Load() != 0 || ok.Load() != int64(tc.want) || over.Load() != callers*attempts-int64(tc.want) {
				t.Fatalf("admitted %d, rejected %d, errors %d; want exactly %d admitted", ok.Load(), over.Load(), errs.Load(), tc.want)
			}
		})
	}
	code, body := httpGet("http://" + procs[0].admin + "/metrics")
	if code != 200 || !strings.Contains(body, `rls_rule_hits_total{domain="e2e",result="over_limit",rule="fixed"}`) || !strings.Contains(body, "rls_redis_round_trips_total") {
		t.Fatalf("metrics missing:\n%s", body)
	}
}

// TestRedisFailureAndReload kills Redis under a running rls: answers follow
// the failure mode without waiting, /ready fails, and both recover by
// themselves when Redis is back. Rules hot-reload; a bad file keeps the last
// good rules.
func TestRedisFailureAndReload(t *testing.T) {
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	srv := redistest.Start(t)
	dir := t.TempDir()
	writeRules(t, dir, "e2e.yaml", e2eRules)
	allow := startRLS(t, bin, "--rules", dir, "--redis-url", srv.URL(), "--redis-timeout", "200ms", "--redis-breaker-cooldown", "200ms")
	deny := startRLS(t, bin, "--rules", dir, "--redis-url", srv.URL(), "--failure-mode", "deny", "--response-headers")

	resp := call(t, deny, request("e2e", "fixed", "x"))
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != 39 || len(resp.GetResponseHeadersToAdd()) != 3 {
		t.Fatalf("first call: %v", resp)
	}
	srv.Kill()
	for _, p := range []*proc{allow, deny} {
		waitFor(t, "/ready to fail with redis down", func() bool {
			code, body := httpGet("http://" + p.admin + "/ready")
			return code == 503 && strings.Contains(body, "redis")
		})
	}
	for i := 0; i < 20; i++ {
		start := time.Now()
		if r := call(t, allow, request("e2e", "fixed", "x")); r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("failure-mode allow answered %v", r)
		}
		if r := call(t, deny, request("e2e", "fixed", "x")); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("failure-mode deny answered %v", r)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("calls took %v with redis down", took)
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovery after redis restart", func() bool {
		code, _ := httpGet("http://" + deny.admin + "/ready")
		r := call(t, deny, request("e2e", "fixed", "y"))
		return code == 200 && r.GetOverallCode() == rlsv3.RateLimitResponse_OK && r.GetStatuses()[0].GetLimitRemaining() < 40
	})
	_, body := httpGet("http://" + allow.admin + "/metrics")
	if !strings.Contains(body, `rls_backend_failures_total{mode="allow"}`) {
		t.Fatalf("failure metric missing:\n%s", body)
	}

	// Hot reload: a new domain appears; a broken file is refused.
	writeRules(t, dir, "more.yaml", "domain: reloaded\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n")
	waitFor(t, "reloaded rules", func() bool {
		return call(t, allow, request("reloaded", "k", "v")).GetStatuses()[0].GetCurrentLimit() != nil
	})
	writeRules(t, dir, "more.yaml", "domain: reloaded\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n")
	waitFor(t, "failed reload logged", func() bool {
		return strings.Contains(allow.stderr.String(), "fortnight") && strings.Contains(allow.stderr.String(), "keeping the last good rules")
	})
	if r := call(t, allow, request("reloaded", "k", "v2")); r.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() != 1 {
		t.Fatalf("last good rules lost: %v", r)
	}
	_, body = httpGet("http://" + allow.admin + "/metrics")
	if !strings.Contains(body, `rls_rules_reloads_total{result="failure"} 1`) {
		t.Fatalf("reload failure metric:\n%s", grep(body, "rls_rules_reloads_total"))
	}

	// SIGTERM drains and exits 0.
	allow.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-allow.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
		allow.exited <- nil
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestBadConfigExitsWithUsage(t *testing.T) {
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	dir := t.TempDir()
	writeRules(t, dir, "bad.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: ghost}]}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rules", dir, "--backend", "memory"}, `bad.yaml:4: rate_limit.replaces.name: "ghost" names no rate_limit`},
		{[]string{"--backend", "memory"}, "--rules is required"},
		{[]string{"--rules", dir, "--backend", "etcd"}, "--backend must be redis or memory"},
		{[]string{"--rules", dir, "--failure-mode", "maybe"}, "--failure-mode: must be allow or deny"},
		{[]string{"--rules", dir, "--redis-type", "ring"}, `redis-type "ring"`},
	} {
		cmd := exec.Command(bin, append(tc.args, "--admin-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0")...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: exit %v, output %q; want exit 2 and %q", tc.args, err, out, tc.want)
		}
	}
}

// mergeFile is a rule file of domain "shared" with one top-level descriptor.
func mergeFile(key string, perHour int) string {
	return fmt.Sprintf("domain: shared\ndescriptors:\n  - key: %s\n    rate_limit: {unit: hour, requests_per_unit: %d}\n", key, perHour)
}

// TestMergeDomainConfig starts rls on a directory where two files declare
// one domain: refused by default, merged with --merge-domain-config (or the
// anchor's MERGE_DOMAIN_CONFIG=true when rls's own setting is absent), and
// then ShouldRateLimit over gRPC answers descriptors of both files; hot
// reload merges a third file and refuses a colliding one.
func TestMergeDomainConfig(t *testing.T) {
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	dir := t.TempDir()
	writeRules(t, dir, "a.yaml", mergeFile("from_a", 2))
	writeRules(t, dir, "b.yaml", mergeFile("from_b", 3))
	cfg := filepath.Join(t.TempDir(), "rls.yaml")
	if err := os.WriteFile(cfg, []byte("merge-domain-config: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Refused: each exits 2 naming the duplicate domain.
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{nil, nil, `duplicate domain "shared"`},
		{[]string{"--merge-domain-config=false"}, []string{"MERGE_DOMAIN_CONFIG=true"}, `duplicate domain "shared"`},
		{nil, []string{"RLS_MERGE_DOMAIN_CONFIG=false", "MERGE_DOMAIN_CONFIG=true"}, `duplicate domain "shared"`},
		{[]string{"--config", cfg}, []string{"MERGE_DOMAIN_CONFIG=true"}, `duplicate domain "shared"`},
		{nil, []string{"MERGE_DOMAIN_CONFIG=maybe"}, `MERGE_DOMAIN_CONFIG: invalid value "maybe"`},
	} {
		cmd := exec.Command(bin, append([]string{"--rules", dir, "--backend", "memory", "--admin-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, tc.args...)...)
		cmd.Env = append(os.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v %v: exit %v, output %q; want exit 2 and %q", tc.args, tc.env, err, out, tc.want)
		}
	}

	// check spends a fresh value's limit and one more call; a run that
	// crosses an hour boundary (two windows) is repeated.
	check := func(t *testing.T, p *proc, key string, limit int) {
		t.Helper()
		for attempt := 0; ; attempt++ {
			hour := limiter.WindowStart(time.Now(), time.Hour)
			value := fmt.Sprintf("v%d", time.Now().UnixNano())
			var got []rlsv3.RateLimitResponse_Code
			for i := 1; i <= limit+1; i++ {
				r := call(t, p, request("shared", key, value))
				if r.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() != uint32(limit) {
					t.Fatalf("%s: %v; want limit %d", key, r, limit)
				}
				got = append(got, r.GetOverallCode())
			}
			if limiter.WindowStart(time.Now(), time.Hour) != hour && attempt < 3 {
				continue
			}
			for i, c := range got {
				want := rlsv3.RateLimitResponse_OK
				if i >= limit {
					want = rlsv3.RateLimitResponse_OVER_LIMIT
				}
				if c != want {
					t.Fatalf("%s: codes %v; want %d OK then OVER_LIMIT", key, got, limit)
				}
			}
			return
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"--merge-domain-config"}, nil},
		{"RLS env", nil, []string{"RLS_MERGE_DOMAIN_CONFIG=true"}},
		{"anchor env", nil, []string{"MERGE_DOMAIN_CONFIG=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startRLSEnv(t, bin, tc.env, append([]string{"--rules", dir, "--backend", "memory"}, tc.args...)...)
			check(t, p, "from_a", 2)
			check(t, p, "from_b", 3)
			if r := call(t, p, request("shared", "elsewhere", "x")); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetCurrentLimit() != nil {
				t.Fatalf("unknown key: %v", r)
			}
		})
	}

	// Hot reload keeps merging; a collision keeps the last good rules.
	p := startRLS(t, bin, "--rules", dir, "--backend", "memory", "--merge-domain-config")
	writeRules(t, dir, "c.yaml", mergeFile("from_c", 4))
	waitFor(t, "c.yaml merged", func() bool {
		return call(t, p, request("shared", "from_c", "probe")).GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() == 4
	})
	writeRules(t, dir, "c.yaml", mergeFile("from_a", 9))
	waitFor(t, "colliding reload refused", func() bool {
		s := p.stderr.String()
		return strings.Contains(s, "duplicate descriptor composite key") && strings.Contains(s, "keeping the last good rules")
	})
	check(t, p, "from_a", 2)
	check(t, p, "from_c", 4)
}
