// Package faultnet wraps memberlist's real network transport so tests can
// partition replicas on 127.0.0.1: a directed block matrix drops packets
// (like lost UDP) and stalls dials until their timeout (like a black-holed
// SYN). memberlist's own MockNetwork cannot model failure: its senders block.
package faultnet

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network is a block matrix shared by every wrapped transport.
type Network struct {
	mu      sync.RWMutex
	blocked map[[2]string]bool // from address → to address
	dropped int64
}

// New returns a network with nothing blocked.
func New() *Network { return &Network{blocked: map[[2]string]bool{}} }

// Block drops traffic from a to b (one direction).
func (n *Network) Block(from, to string) {
	n.mu.Lock()
	n.blocked[[2]string{from, to}] = true
	n.mu.Unlock()
}

// Partition blocks both directions between every address of side a and
// every address of side b.
func (n *Network) Partition(a, b []string) {
	for _, x := range a {
		for _, y := range b {
			n.Block(x, y)
			n.Block(y, x)
		}
	}
}

// Heal removes every block.
func (n *Network) Heal() {
	n.mu.Lock()
	clear(n.blocked)
	n.mu.Unlock()
}

// Dropped is the number of packets and dials refused so far.
func (n *Network) Dropped() int64 {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.dropped
}

func (n *Network) cut(from, to string) bool {
	n.mu.RLock()
	b := n.blocked[[2]string{from, to}]
	n.mu.RUnlock()
	if b {
		n.mu.Lock()
		n.dropped++
		n.mu.Unlock()
	}
	return b
}

// Wrap returns a transport for the member bound at self.
func (n *Network) Wrap(self string, inner memberlist.Transport) memberlist.NodeAwareTransport {
	return &transport{Transport: inner, net: n, self: self}
}

type transport struct {
	memberlist.Transport
	net  *Network
	self string
}

var errBlackHoled = errors.New("faultnet: dial timed out (black-holed)")

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.net.cut(t.self, addr) {
		return time.Now(), nil
	}
	return t.Transport.WriteTo(b, addr)
}

func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.net.cut(t.self, addr) {
		time.Sleep(timeout)
		return nil, errBlackHoled
	}
	return t.Transport.DialTimeout(addr, timeout)
}

func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}
