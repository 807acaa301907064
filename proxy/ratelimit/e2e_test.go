package ratelimit

import (
	"bufio"
	"context"
	"fmt"
	"net"
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

	"github.com/sidemesh/sidemesh/internal/redistest"
	"github.com/sidemesh/sidemesh/internal/syncbuf"
	"github.com/sidemesh/sidemesh/internal/testbin"
)

type rlsProc struct {
	cmd         *exec.Cmd
	grpc, admin string
	exited      chan struct{}
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startRLSProcB starts an rls process for a benchmark; it returns the gRPC
// address and the process id.
func startRLSProcB(b *testing.B, bin, rules, redisURL string) (string, int) {
	p := startRLSProc(b, bin, rules, redisURL)
	return p.grpc, p.cmd.Process.Pid
}

// cpuTime is a process's user+system CPU time from /proc (Linux, 100 Hz ticks).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func startRLSProc(t testing.TB, bin, rules, redisURL string) *rlsProc {
	t.Helper()
	p := &rlsProc{grpc: freeAddr(t), admin: freeAddr(t), exited: make(chan struct{})}
	stderr := &syncbuf.Buffer{}
	p.cmd = exec.Command(bin, "--grpc-addr", p.grpc, "--admin-addr", p.admin, "--rules", rules, "--backend", "redis", "--redis-url", redisURL)
	p.cmd.Stderr = stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("rls %s stderr:\n%s", p.grpc, stderr.String())
		}
	})
	waitUntil(t, "rls /ready", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("rls exited at start:\n%s", stderr.String())
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

// requestsServed reads rls_requests_total (all answers) from /metrics.
func (p *rlsProc) requestsServed(t *testing.T) int {
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "rls_requests_total{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestE2ETwoRLSReplicasOneRedis: the filter in front of a real HTTP app,
// calling two real RLS processes (round robin over one shared connection)
// that count in one real Redis. A limit of 5/minute on x-user gives
// exactly 5 200s then 429s, with both replicas serving; killing RLS makes
// the filter follow failure_mode_deny.
func TestE2ETwoRLSReplicasOneRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the rls binary")
	}
	bin := testbin.Build(t, "./services/rls/cmd/rls")
	redis := redistest.Start(t)
	dir := t.TempDir()
	rules := "domain: sidemesh\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"
	if err := os.WriteFile(filepath.Join(dir, "sidemesh.yaml"), []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	r1 := startRLSProc(t, bin, dir, redis.URL())
	r2 := startRLSProc(t, bin, dir, redis.URL())

	conn, client, err := Dial([]string{r1.grpc, r2.grpc})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	allow, err := New(filterConf(time.Second, false), client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	deny, err := New(filterConf(time.Second, true), client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	route := userRoute(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	srvAllow := httptest.NewServer(allow.Handler(app, func(*http.Request) RouteInfo { return route }))
	defer srvAllow.Close()
	srvDeny := httptest.NewServer(deny.Handler(app, func(*http.Request) RouteInfo { return route }))
	defer srvDeny.Close()
	get := func(base, user string) int {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", base+"/api/x", nil)
		req.Header.Set("x-user", user)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// A unique user per run: the counter key lives a minute in Redis.
	user := fmt.Sprintf("u%d", time.Now().UnixNano())
	var codes []int
	for range 12 {
		codes = append(codes, get(srvAllow.URL, user))
	}
	want := []int{200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429, 429}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		// A window boundary (minute) in the middle resets the count; retry once.
		user += "b"
		codes = codes[:0]
		for range 12 {
			codes = append(codes, get(srvAllow.URL, user))
		}
		if fmt.Sprint(codes) != fmt.Sprint(want) {
			t.Fatalf("codes %v, want %v", codes, want)
		}
	}
	n1, n2 := r1.requestsServed(t), r2.requestsServed(t)
	if n1 == 0 || n2 == 0 || n1+n2 < 12 {
		t.Fatalf("both replicas should serve: %d and %d", n1, n2)
	}
	t.Logf("rls-1 served %d, rls-2 served %d", n1, n2)

	// RLS gone: allow passes traffic, deny answers 500.
	_ = r1.cmd.Process.Kill()
	_ = r2.cmd.Process.Kill()
	<-r1.exited
	<-r2.exited
	if c := get(srvAllow.URL, user+"x"); c != 200 {
		t.Fatalf("failure mode allow: %d", c)
	}
	if c := get(srvDeny.URL, user+"y"); c != 500 {
		t.Fatalf("failure mode deny: %d", c)
	}
	if s := allow.Stats(); s.OK != 5 && s.OK != 10 || s.FailureModeAllowed != 1 {
		t.Fatalf("stats: %+v", s)
	}
}
