package server

import (
	"errors"
	"math/rand/v2"
	"net"
	"time"
)

// serveTCP runs the tcp_proxy filter: each connection is spliced to a host
// of the configured cluster, chosen when the connection arrives.
func (p *Proxy) serveTCP(l *liveListener) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("tcp listener stopped", "name", l.name, "err", err)
			}
			return
		}
		st := l.state.Load()
		if st.cfg.tcp == nil {
			if ch := st.cfg.pick(keyOf(c.LocalAddr(), c.RemoteAddr())); ch == nil || ch.tcp == nil {
				c.Close() // no filter chain matches: Envoy closes the connection
				continue
			} else {
				st = &lstate{cfg: &listenerConfig{name: st.cfg.name, tcp: ch.tcp}, snap: st.snap}
			}
		}
		l.stats.Cx.Inc()
		l.stats.CxActive.Inc()
		l.tcp.add(c)
		go func() {
			defer func() {
				l.tcp.remove(c)
				l.stats.CxActive.Dec()
				c.Close()
			}()
			p.proxyTCP(st, c)
		}()
	}
}

func (p *Proxy) proxyTCP(st *lstate, c net.Conn) {
	tc := st.cfg.tcp
	n := rand.Uint32N(tc.total)
	name := tc.clusters[len(tc.clusters)-1].Name
	for _, wc := range tc.clusters {
		if n < wc.Weight {
			name = wc.Name
			break
		}
		n -= wc.Weight
	}
	cl := st.snap.Clusters[name]
	if cl == nil {
		return
	}
	var up net.Conn
	var prev = cl.Pick(0, false, nil)
	for try := 0; try < 2 && prev != nil; try++ {
		hst := prev
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", hst.Addr)
		if err == nil {
			up = conn
			cl.Begin(hst)
			defer cl.End(hst, 200)
			break
		}
		cl.Begin(hst)
		cl.End(hst, 0)
		cl.Stats.CxFail.Inc()
		prev = cl.Pick(0, false, hst)
	}
	if up == nil {
		return
	}
	defer up.Close()
	idle := tc.idleTimeout
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 16<<10)
		for {
			if idle > 0 {
				src.SetReadDeadline(time.Now().Add(idle))
			}
			k, err := src.Read(buf)
			if k > 0 {
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tcp, ok := dst.(*net.TCPConn); ok {
			tcp.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}
