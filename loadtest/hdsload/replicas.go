package hdsload

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/loadtest/harness"
)

// Replica is one HDS process started by the harness.
type Replica struct {
	Name, GRPC, Admin, Gossip string
	cmd                       *exec.Cmd
	exited                    chan struct{}
	log                       *os.File
}

// PID is the replica's process id.
func (r *Replica) PID() int { return r.cmd.Process.Pid }

// StartReplicas starts n HDS replicas from bin on loopback, joined into one
// ring and reading clustersFile, with logs in dir, and waits until each
// answers /ready.
func StartReplicas(ctx context.Context, bin string, n int, clustersFile, dir string, extra []string) ([]*Replica, error) {
	var reps []*Replica
	fail := func(err error) ([]*Replica, error) {
		StopReplicas(reps)
		return nil, err
	}
	for i := range n {
		r := &Replica{Name: fmt.Sprintf("hds-lt-%d", i)}
		for _, p := range []*string{&r.GRPC, &r.Admin, &r.Gossip} {
			a, err := harness.FreeAddr()
			if err != nil {
				return fail(err)
			}
			*p = a
		}
		reps = append(reps, r)
	}
	var join []string
	for _, r := range reps {
		join = append(join, r.Gossip)
	}
	for _, r := range reps {
		args := append([]string{"--grpc-addr", r.GRPC, "--admin-addr", r.Admin, "--node-name", r.Name, "--gossip-addr", r.Gossip,
			"--join", strings.Join(join, ","), "--clusters-file", clustersFile}, extra...)
		f, err := os.Create(filepath.Join(dir, r.Name+".log"))
		if err != nil {
			return fail(err)
		}
		r.log = f
		r.cmd = exec.Command(bin, args...)
		r.cmd.Stdout, r.cmd.Stderr = f, f
		if err := r.cmd.Start(); err != nil {
			return fail(fmt.Errorf("starting %s: %w", bin, err))
		}
		r.exited = make(chan struct{})
		go func() { r.cmd.Wait(); close(r.exited) }()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range reps {
		for {
			if ready(ctx, "http://"+r.Admin+"/ready") {
				break
			}
			select {
			case <-r.exited:
				return fail(fmt.Errorf("replica %s exited at start; see %s", r.Name, r.log.Name()))
			default:
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fail(fmt.Errorf("replica %s not ready after 30s; see %s", r.Name, r.log.Name()))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return reps, nil
}

func ready(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Kill SIGKILLs the replica and reaps it.
func (r *Replica) Kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

// StopReplicas terminates every replica (SIGTERM, then SIGKILL after 10 s).
func StopReplicas(reps []*Replica) {
	for _, r := range reps {
		if r.cmd != nil && r.exited != nil {
			r.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, r := range reps {
		if r.cmd != nil && r.exited != nil {
			select {
			case <-r.exited:
			case <-time.After(10 * time.Second):
				r.cmd.Process.Kill()
				<-r.exited
			}
		}
		if r.log != nil {
			r.log.Close()
		}
	}
}
