package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/proxy/stats"
)

// liveListener is one bound socket and what serves it. Its config and the
// snapshot it routes with are swapped together through one atomic pointer.
type liveListener struct {
	name    string
	cfgAddr string
	kind    int
	ln      net.Listener
	state   atomic.Pointer[lstate]
	srv     *http.Server
	stats   *stats.Listener
	conns   atomic.Int64
	tcp     *tcpConns
}

type lstate struct {
	cfg  *listenerConfig
	snap *Snapshot
}

// drainGrace is how long a draining HTTP listener lets keep-alive clients
// finish (each gets "Connection: close" on its next response) before idle
// connections are closed.
const drainGrace = 2 * time.Second

// prepareListeners binds every socket the new config needs; it returns a
// commit that makes the config live, or an error after closing what it bound.
func (p *Proxy) prepareListeners(lcs map[string]*listenerConfig) (func(*Snapshot), error) {
	next := map[string]*liveListener{}
	var fresh []*liveListener
	var retire []*liveListener
	for name, old := range p.listeners {
		if lc, ok := lcs[name]; !ok || lc.addr != old.cfgAddr || lc.kind != old.kind {
			retire = append(retire, old)
		}
	}
	// Sockets whose listener goes away free their address for a replacement.
	freed := map[string]*liveListener{}
	for _, r := range retire {
		freed[r.cfgAddr] = r
	}
	for _, name := range sortedNames(lcs) {
		lc := lcs[name]
		if old := p.listeners[name]; old != nil && old.cfgAddr == lc.addr && old.kind == lc.kind {
			next[name] = old
			continue
		}
		if r := freed[lc.addr]; r != nil {
			// Same address, new listener: stop the old accept loop first.
			p.drainNow(r)
			delete(freed, lc.addr)
		}
		ln, err := p.bind(lc.addr)
		if err != nil {
			for _, f := range fresh {
				f.ln.Close()
			}
			return nil, fmt.Errorf("listener %q: bind %s: %w", name, lc.addr, err)
		}
		l := &liveListener{name: name, cfgAddr: lc.addr, kind: lc.kind, ln: ln, stats: p.opt.Metrics.Listener(lc.addr)}
		fresh = append(fresh, l)
		next[name] = l
	}
	return func(ns *Snapshot) {
		for name, l := range next {
			l.state.Store(&lstate{cfg: lcs[name], snap: ns})
		}
		for _, l := range fresh {
			p.serve(l)
		}
		for _, r := range retire {
			if freed[r.cfgAddr] == r {
				p.drain(r)
			}
		}
		p.listeners = next
	}, nil
}

func (p *Proxy) bind(addr string) (net.Listener, error) {
	if ln, ok := p.inherited[addr]; ok {
		delete(p.inherited, addr)
		p.log.Info("listener taken over from previous process", "addr", addr)
		return ln, nil
	}
	return net.Listen("tcp", addr)
}

func (p *Proxy) serve(l *liveListener) {
	p.log.Info("listener up", "name", l.name, "addr", l.ln.Addr().String())
	if l.kind == kindTCP {
		l.tcp = &tcpConns{m: map[net.Conn]struct{}{}}
		go p.serveTCP(l)
		return
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	idle := time.Hour
	if st := l.state.Load(); st != nil {
		if h := st.cfg.hcm; h != nil {
			idle = h.idleTimeout
		} else if len(st.cfg.chains) > 0 {
			idle = st.cfg.chains[0].hcm.idleTimeout
		} else if st.cfg.def != nil {
			idle = st.cfg.def.hcm.idleTimeout
		}
	}
	l.srv = &http.Server{
		Handler:     &httpHandler{p: p, l: l},
		Protocols:   protos,
		IdleTimeout: idle,
		ErrorLog:    slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				l.conns.Add(1)
				l.stats.Cx.Inc()
				l.stats.CxActive.Inc()
			case http.StateClosed, http.StateHijacked:
				l.conns.Add(-1)
				l.stats.CxActive.Dec()
			}
		},
	}
	go func() {
		if err := l.srv.Serve(matchListener{Listener: l.ln, l: l}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			p.log.Error("listener stopped", "name", l.name, "err", err)
		}
	}()
}

// drainNow closes a listener's socket at once (its address is being reused).
func (p *Proxy) drainNow(l *liveListener) {
	l.ln.Close()
	p.drain(l)
}

// drain stops accepting, lets in-flight requests and keep-alive connections
// finish within the drain timeout, then closes what is left.
func (p *Proxy) drain(l *liveListener) {
	p.drains.Add(1)
	go func() {
		defer p.drains.Done()
		start := time.Now()
		deadline := start.Add(p.opt.DrainTimeout)
		l.ln.Close()
		p.log.Info("listener draining", "name", l.name, "addr", l.cfgAddr)
		if l.kind == kindTCP {
			for l.tcp.count() > 0 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			l.tcp.closeAll()
			return
		}
		l.srv.SetKeepAlivesEnabled(false)
		grace := min(drainGrace, p.opt.DrainTimeout)
		for l.conns.Load() > 0 && time.Since(start) < grace {
			time.Sleep(20 * time.Millisecond)
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		if err := l.srv.Shutdown(ctx); err != nil {
			l.srv.Close()
		}
		p.log.Info("listener drained", "name", l.name, "took", time.Since(start).Round(time.Millisecond))
	}()
}

type tcpConns struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (t *tcpConns) add(c net.Conn) {
	t.mu.Lock()
	t.m[c] = struct{}{}
	t.mu.Unlock()
}

func (t *tcpConns) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.m, c)
	t.mu.Unlock()
}

func (t *tcpConns) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *tcpConns) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.m {
		c.Close()
	}
}

// matchListener closes, at accept, connections that match no filter chain
// of the listener's current config, as Envoy does.
type matchListener struct {
	net.Listener
	l *liveListener
}

func (m matchListener) Accept() (net.Conn, error) {
	for {
		c, err := m.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cfg := m.l.state.Load().cfg
		if cfg.hcm != nil || cfg.pick(keyOf(c.LocalAddr(), c.RemoteAddr())) != nil {
			return c, nil
		}
		c.Close()
	}
}
