// Package hotrestart hands listening sockets from a running proxy to its
// successor over a unix socket (SCM_RIGHTS), so a new binary takes over
// without refusing a connection: both accept from the same sockets until
// the successor says it is ready, then the old process drains and exits.
package hotrestart

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Server offers the process's listeners to a successor.
type Server struct {
	Path string
	// Listeners returns the sockets to hand over, by configured address.
	Listeners func() map[string]net.Listener
	// OnHandoff is called once the successor is ready; the process should
	// then drain and exit.
	OnHandoff func()
}

// Serve accepts successors on Path until ctx ends or a handoff completes.
func (s *Server) Serve(ctx context.Context) error {
	os.Remove(s.Path) // a stale socket from a crashed process
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.Path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("hot restart socket %s: %w", s.Path, err)
	}
	ln.SetUnlinkOnClose(true)
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if s.handle(c, ln) {
			return nil
		}
	}
}

type offer struct {
	Addrs []string `json:"addrs"`
}

// handle serves one successor; it reports whether the handoff completed.
func (s *Server) handle(c *net.UnixConn, ln *net.UnixListener) bool {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "LISTENERS" {
		return false
	}
	var o offer
	var files []*os.File
	for addr, l := range s.Listeners() {
		tl, ok := l.(*net.TCPListener)
		if !ok {
			continue
		}
		f, err := tl.File()
		if err != nil {
			continue
		}
		o.Addrs = append(o.Addrs, addr)
		files = append(files, f)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	js, _ := json.Marshal(o)
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(append(js, '\n'), oob, nil); err != nil {
		return false
	}
	// The successor may take a while to get its config; wait for it.
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	line, err = br.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "DRAIN" {
		return false
	}
	ln.Close() // frees Path for the successor's own hot-restart socket
	c.Write([]byte("OK\n"))
	if s.OnHandoff != nil {
		s.OnHandoff()
	}
	return true
}

// Handoff is a successor's side of a restart in progress.
type Handoff struct {
	conn *net.UnixConn
	br   *bufio.Reader
}

// Take connects to the running process at path and receives its listeners.
func Take(path string) (map[string]net.Listener, *Handoff, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("--restart-from %s: %w", path, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("LISTENERS\n")); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("--restart-from %s: %w", path, err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(4*256))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("--restart-from %s: %w", path, err)
	}
	var o offer
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(buf[:n]))), &o); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("--restart-from %s: bad offer: %w", path, err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("--restart-from %s: %w", path, err)
		}
		for _, m := range msgs {
			f, err := syscall.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, f...)
			}
		}
	}
	if len(fds) != len(o.Addrs) {
		c.Close()
		return nil, nil, fmt.Errorf("--restart-from %s: got %d sockets for %d addresses", path, len(fds), len(o.Addrs))
	}
	out := map[string]net.Listener{}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "listener:"+o.Addrs[i])
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("--restart-from %s: socket for %s: %w", path, o.Addrs[i], err)
		}
		out[o.Addrs[i]] = l
	}
	c.SetDeadline(time.Time{})
	return out, &Handoff{conn: c, br: bufio.NewReader(c)}, nil
}

// Done tells the old process to drain and waits until it released the
// hot-restart socket path.
func (h *Handoff) Done() error {
	defer h.conn.Close()
	h.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := h.conn.Write([]byte("DRAIN\n")); err != nil {
		return err
	}
	line, err := h.br.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "OK" {
		return fmt.Errorf("old process did not confirm drain: %v", err)
	}
	return nil
}
