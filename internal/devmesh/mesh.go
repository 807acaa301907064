package devmesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Mesh is a running local mesh.
type Mesh struct {
	BinDir string // where controlplane, hds, rls, proxy live
	Self   string // the meshrun binary (runs demo apps)
	LogDir string

	mu      sync.Mutex
	running []*running
	skipped []string
	outMu   sync.Mutex
	out     io.Writer
}

// Tail starts copying every process's log lines to w, prefixed by name.
func (m *Mesh) Tail(w io.Writer) {
	m.outMu.Lock()
	m.out = w
	m.outMu.Unlock()
}

type running struct {
	Proc
	cmd    *exec.Cmd
	done   chan struct{}
	status string
}

// RedisServer returns the path of redis-server, or "" when absent.
func RedisServer() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// RedisProc is the private Redis of the mesh.
func RedisProc(port int, dir string) Proc {
	return Proc{
		Name: "redis", Kind: "redis",
		Args:  []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--dir", dir},
		Ports: "redis 127.0.0.1:" + strconv.Itoa(port),
	}
}

// Start launches procs in order. A binary that is missing, or that does not
// yet accept the flags the mesh passes it, is skipped with a note.
func (m *Mesh) Start(ctx context.Context, procs []Proc) error {
	if err := os.MkdirAll(m.LogDir, 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	for _, p := range procs {
		var bin string
		var args []string
		switch p.Kind {
		case "redis":
			bin, args = RedisServer(), p.Args
		case "demo-app":
			bin, args = m.Self, append([]string{"demo-app"}, p.Args...)
		default:
			bin, args = filepath.Join(m.BinDir, p.Kind), p.Args
			if why := supports(ctx, bin, p.Needs); why != "" {
				m.skipped = append(m.skipped, fmt.Sprintf("%s: %s", p.Name, why))
				continue
			}
		}
		if err := m.launch(p, bin, args); err != nil {
			return err
		}
	}
	return nil
}

// supports says why bin cannot run in the mesh yet, or "".
func supports(ctx context.Context, bin string, needs []string) string {
	if _, err := os.Stat(bin); err != nil {
		return "not built (" + bin + " missing; run make build)"
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(cctx, bin, "--help").CombinedOutput()
	var missing []string
	for _, f := range needs {
		if !strings.Contains(string(out), f) {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return "not built yet (its binary lacks " + strings.Join(missing, ", ") + ")"
	}
	return ""
}

func (m *Mesh) launch(p Proc, bin string, args []string) error {
	cmd := exec.Command(bin, args...)
	// Own process group: Ctrl-C reaches meshrun only, which then stops
	// children in order; Pdeathsig kills them if meshrun itself dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(m.LogDir, p.Name+".log"))
	if err != nil {
		return fmt.Errorf("%s log: %w", p.Name, err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s (%s): %w", p.Name, bin, err)
	}
	r := &running{Proc: p, cmd: cmd, done: make(chan struct{}), status: "starting"}
	go m.copyLog(p.Name, pr, logf)
	go func() {
		err := cmd.Wait()
		pw.Close()
		m.mu.Lock()
		r.status = "exited"
		if err != nil {
			r.status = "exited: " + err.Error()
		}
		m.mu.Unlock()
		close(r.done)
	}()
	m.mu.Lock()
	m.running = append(m.running, r)
	m.mu.Unlock()
	return nil
}

func (m *Mesh) copyLog(name string, r io.Reader, f *os.File) {
	defer f.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(f, line)
		m.outMu.Lock()
		if m.out != nil {
			fmt.Fprintf(m.out, "%-13s| %s\n", name, line)
		}
		m.outMu.Unlock()
	}
}

// WaitReady polls every process until ready or the deadline; it reports
// progress through note.
func (m *Mesh) WaitReady(ctx context.Context, timeout time.Duration, note func(string)) {
	m.mu.Lock()
	rs := append([]*running(nil), m.running...)
	m.mu.Unlock()
	deadline := time.Now().Add(timeout)
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func(r *running) {
			defer wg.Done()
			last := ""
			for {
				st := probe(ctx, r)
				m.mu.Lock()
				exited := strings.HasPrefix(r.status, "exited")
				if !exited {
					r.status = st
				}
				m.mu.Unlock()
				if exited || st == "ready" {
					if note != nil {
						note(fmt.Sprintf("%s: %s", r.Name, m.status(r)))
					}
					return
				}
				last = st
				if time.Now().After(deadline) || ctx.Err() != nil {
					if note != nil {
						note(fmt.Sprintf("%s: still %s", r.Name, last))
					}
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}(r)
	}
	wg.Wait()
}

func (m *Mesh) status(r *running) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return r.status
}

func probe(ctx context.Context, r *running) string {
	switch {
	case r.Admin != "":
		return httpProbe(ctx, "http://"+r.Admin+"/ready")
	case r.Kind == "demo-app":
		addr := r.Args[len(r.Args)-1]
		return httpProbe(ctx, "http://"+addr+"/healthz")
	default:
		addr := strings.TrimPrefix(r.Ports, "redis ")
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return "not listening"
		}
		c.Close()
		return "ready"
	}
}

func httpProbe(ctx context.Context, url string) string {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "not answering"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	if resp.StatusCode == http.StatusOK {
		return "ready"
	}
	return strings.TrimSpace(string(b))
}

// Table writes what runs where.
func (m *Mesh) Table(w io.Writer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tSTATUS\tADDRESSES")
	for _, r := range m.running {
		pid := 0
		if r.cmd.Process != nil {
			pid = r.cmd.Process.Pid
		}
		st := r.status
		if len(st) > 40 {
			st = st[:40] + "…"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.Name, pid, st, r.Ports)
	}
	tw.Flush()
	for _, s := range m.skipped {
		fmt.Fprintf(w, "skipped %s\n", s)
	}
}

// Running reports whether a process of that name was started.
func (m *Mesh) Running(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.running {
		if r.Name == name {
			return true
		}
	}
	return false
}

// PIDs lists the started processes' PIDs.
func (m *Mesh) PIDs() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var pids []int
	for _, r := range m.running {
		if r.cmd.Process != nil {
			pids = append(pids, r.cmd.Process.Pid)
		}
	}
	return pids
}

// Stop sends SIGTERM to every process (proxies first, Redis last), waits up
// to grace for them to drain, then kills what is left.
func (m *Mesh) Stop(grace time.Duration) error {
	m.mu.Lock()
	rs := append([]*running(nil), m.running...)
	m.mu.Unlock()
	var errs []error
	for i := len(rs) - 1; i >= 0; i-- {
		if p := rs[i].cmd.Process; p != nil {
			syscall.Kill(-p.Pid, syscall.SIGTERM)
		}
	}
	deadline := time.After(grace)
	for _, r := range rs {
		select {
		case <-r.done:
		case <-deadline:
		}
	}
	for _, r := range rs {
		select {
		case <-r.done:
		default:
			errs = append(errs, fmt.Errorf("%s did not stop within %s; killed", r.Name, grace))
			syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
			<-r.done
		}
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to one process (failure tests) and waits for it to exit.
func (m *Mesh) Kill(name string) error {
	m.mu.Lock()
	var r *running
	for _, x := range m.running {
		if x.Name == name {
			r = x
		}
	}
	m.mu.Unlock()
	if r == nil || r.cmd.Process == nil {
		return fmt.Errorf("no process %q", name)
	}
	syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.done
	return nil
}

// Skipped lists the processes not started and why.
func (m *Mesh) Skipped() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.skipped...)
}
