package ring

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// maxMsg keeps a single broadcast well inside memberlist's 1400-byte UDP
// packet (compound headers and the label take the rest). Larger entries
// travel only by push/pull.
const maxMsg = 1000

// Timings are the memberlist timers the ring uses.
type Timings struct {
	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	SuspicionMult    int
	GossipInterval   time.Duration
	PushPullInterval time.Duration
	GossipToTheDead  time.Duration
	TCPTimeout       time.Duration
}

// LocalTimings are memberlist's local-network timers (DefaultLocalConfig)
// on the LAN profile's retransmit multiplier (and a longer TCP timeout), which research found needed
// for reliable dissemination.
func LocalTimings() Timings {
	return Timings{
		ProbeInterval:    time.Second,
		ProbeTimeout:     200 * time.Millisecond,
		SuspicionMult:    3,
		GossipInterval:   100 * time.Millisecond,
		PushPullInterval: 15 * time.Second,
		GossipToTheDead:  15 * time.Second,
		// memberlist's local default is 1 s; push/pull of a large state on
		// a busy host needs longer.
		TCPTimeout: 5 * time.Second,
	}
}

// FastTimings detect a dead peer in one to three seconds; for tests. They
// stay loose enough not to suspect live peers on a loaded 2-core machine.
func FastTimings() Timings {
	return Timings{
		ProbeInterval:    300 * time.Millisecond,
		ProbeTimeout:     200 * time.Millisecond,
		SuspicionMult:    3,
		GossipInterval:   50 * time.Millisecond,
		PushPullInterval: 2 * time.Second,
		GossipToTheDead:  3 * time.Second,
		TCPTimeout:       time.Second,
	}
}

// Config configures a ring member.
type Config struct {
	Name      string
	BindAddr  string // IP to bind (gossip is UDP and TCP on one port)
	BindPort  int    // 0 picks a free port
	Advertise string // optional host:port peers should use
	Seeds     []string
	Label     string // rings with different labels never merge
	SecretKey []byte // optional AES key (16, 24 or 32 bytes)
	Timings   Timings
	// RejoinInterval re-joins the seeds periodically so a partition that
	// outlived GossipToTheDead heals; 0 disables.
	RejoinInterval time.Duration
	// WrapTransport lets tests inject faults around the real transport.
	WrapTransport func(self string, t memberlist.Transport) memberlist.NodeAwareTransport
	Log           *slog.Logger
	// OnChange is called (from memberlist goroutines; it must not block)
	// after the membership or the shared state changed.
	OnChange func()
}

// Stats are cumulative gossip payload counters.
type Stats struct {
	BytesIn, BytesOut, Merges, Rebroadcasts atomic.Int64
}

// Ring is one replica's membership in the ring.
type Ring struct {
	cfg   Config
	state *State
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	log   *slog.Logger
	Stats Stats
	addr  string

	mu      sync.Mutex
	closed  bool
	pending fullState // local changes waiting for the next direct batch
	// peers are copies of alive and suspect members, kept from memberlist's
	// events: the *Node values Members() returns are mutated by memberlist
	// without a lock we could take.
	peers map[string]memberlist.Node
	retry map[string]fullState // per peer: changes a direct send failed to deliver
	stop  chan struct{}
	wake  chan struct{}
}

// Start creates the memberlist node and joins the seeds (failing to reach
// any seed is not an error: the rejoin loop keeps trying).
func Start(cfg Config, state *State) (*Ring, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("ring: node name is required")
	}
	if cfg.Timings == (Timings{}) {
		cfg.Timings = LocalTimings()
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Ring{cfg: cfg, state: state, log: log, stop: make(chan struct{}), wake: make(chan struct{}, 1), peers: map[string]memberlist.Node{}, retry: map[string]fullState{}}
	if r.cfg.OnChange == nil {
		r.cfg.OnChange = func() {}
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.Label = cfg.Label
	mc.ProbeInterval = cfg.Timings.ProbeInterval
	mc.ProbeTimeout = cfg.Timings.ProbeTimeout
	mc.SuspicionMult = cfg.Timings.SuspicionMult
	mc.GossipInterval = cfg.Timings.GossipInterval
	mc.PushPullInterval = cfg.Timings.PushPullInterval
	mc.GossipToTheDeadTime = cfg.Timings.GossipToTheDead
	mc.TCPTimeout = cfg.Timings.TCPTimeout
	mc.RetransmitMult = 4
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = cfg.SecretKey
	}
	mc.Logger = stdlog.New(logWriter{log}, "", 0)
	mc.Delegate = (*delegate)(r)
	mc.Events = (*events)(r)

	bind := cfg.BindAddr
	if bind == "" {
		bind = "127.0.0.1"
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{bind}, BindPort: cfg.BindPort, Logger: mc.Logger})
	if err != nil {
		return nil, fmt.Errorf("ring: gossip bind %s:%d: %w", bind, cfg.BindPort, err)
	}
	port := nt.GetAutoBindPort()
	mc.BindAddr, mc.BindPort = bind, port
	mc.AdvertisePort = port
	if cfg.Advertise != "" {
		h, p, err := net.SplitHostPort(cfg.Advertise)
		if err != nil {
			nt.Shutdown()
			return nil, fmt.Errorf("ring: advertise address %q: %w", cfg.Advertise, err)
		}
		mc.AdvertiseAddr = h
		mc.AdvertisePort, _ = strconv.Atoi(p)
	}
	r.addr = net.JoinHostPort(bind, strconv.Itoa(port))
	if cfg.WrapTransport != nil {
		mc.Transport = cfg.WrapTransport(r.addr, nt)
	} else {
		mc.Transport = nt
	}
	r.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return r.numMembers() }, RetransmitMult: mc.RetransmitMult}
	ml, err := memberlist.Create(mc)
	if err != nil {
		nt.Shutdown()
		return nil, fmt.Errorf("ring: %w", err)
	}
	r.mu.Lock()
	r.ml = ml
	r.mu.Unlock()
	r.join()
	go r.directLoop()
	return r, nil
}

func (r *Ring) numMembers() int {
	r.mu.Lock()
	ml := r.ml
	r.mu.Unlock()
	if ml == nil {
		return 1
	}
	return ml.NumMembers()
}

// Addr is the bound gossip address.
func (r *Ring) Addr() string { return r.addr }

// Name is this member's name.
func (r *Ring) Name() string { return r.cfg.Name }

// State is the shared state.
func (r *Ring) State() *State { return r.state }

// Members returns the names of alive and suspect members (self included),
// sorted. Suspects still count: they often refute, and dropping them would
// move their proxies' work back and forth.
func (r *Ring) Members() []string {
	r.mu.Lock()
	out := make([]string, 0, len(r.peers))
	for n := range r.peers {
		out = append(out, n)
	}
	r.mu.Unlock()
	sort.Strings(out)
	return out
}

func (r *Ring) peerListLocked() []memberlist.Node {
	out := make([]memberlist.Node, 0, len(r.peers))
	for _, n := range r.peers {
		if n.Name != r.cfg.Name {
			out = append(out, n)
		}
	}
	return out
}

func (r *Ring) join() {
	var seeds []string
	for _, s := range r.cfg.Seeds {
		if s != "" && s != r.addr && s != r.cfg.Advertise {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) == 0 {
		return
	}
	n, err := r.ml.Join(seeds)
	if err != nil {
		lvl := slog.LevelDebug
		if len(r.Members()) <= 1 {
			lvl = slog.LevelWarn // alone: say why (wrong key, label, address)
		}
		r.log.Log(context.Background(), lvl, "gossip join: no seed reachable", "seeds", seeds, "err", err)
		return
	}
	r.log.Debug("gossip joined", "contacted", n)
}

// Run re-joins the seeds every RejoinInterval until ctx ends.
func (r *Ring) Run(ctx context.Context) error {
	if r.cfg.RejoinInterval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(r.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.join()
		}
	}
}

// smallBatch is the most entries a local change may have to also travel
// as UDP broadcasts (epidemic, re-broadcast on first receipt). Every local
// change also goes to each member directly over TCP in coalesced batches:
// gossip moves only about a packet of entries per peer per gossip interval,
// which a fleet start (thousands of votes at once) would queue for minutes.
const smallBatch = 16

// PublishProxy writes a local proxy entry and gossips it.
func (r *Ring) PublishProxy(e ProxyEntry) {
	if r.state.MergeProxy(e) {
		r.broadcast("p/"+e.ID, encodeProxy(e))
		r.enqueue(fullState{Proxies: []ProxyEntry{e}})
		r.cfg.OnChange()
	}
}

// PublishVote writes one local vote and gossips it.
func (r *Ring) PublishVote(e VoteEntry) { r.PublishVotes([]VoteEntry{e}) }

// PublishVotes writes local votes and gossips the ones that changed.
func (r *Ring) PublishVotes(vs []VoteEntry) {
	var changed []VoteEntry
	for _, e := range vs {
		if r.state.MergeVote(e) {
			changed = append(changed, e)
		}
	}
	if len(changed) == 0 {
		return
	}
	if len(changed) <= smallBatch {
		for _, e := range changed {
			r.broadcast("v/"+e.Endpoint+"|"+e.Checker, encodeVote(e))
		}
	}
	r.enqueue(fullState{Votes: changed})
	r.cfg.OnChange()
}

func (r *Ring) enqueue(fs fullState) {
	r.mu.Lock()
	r.pending.Proxies = append(r.pending.Proxies, fs.Proxies...)
	r.pending.Votes = append(r.pending.Votes, fs.Votes...)
	r.mu.Unlock()
	r.kick()
}

// directBatch bounds one reliable message (memberlist accepts up to 20 MiB).
const directBatch = 2000

// directLoop sends pending local changes to every other member over TCP,
// coalescing for a gossip interval. Receivers merge without re-sending (each
// member got its own copy); a member that missed a batch catches up at the
// next push/pull.
func (r *Ring) directLoop() {
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		}
		select {
		case <-r.stop:
			return
		case <-time.After(r.cfg.Timings.GossipInterval):
		}
		r.mu.Lock()
		fs := r.pending
		r.pending = fullState{}
		ml := r.ml
		// Each peer gets the new changes plus whatever failed to reach it
		// last time (bounded: beyond that, push/pull catches it up).
		for name := range r.retry {
			if _, ok := r.peers[name]; !ok {
				delete(r.retry, name)
			}
		}
		peers := r.peerListLocked()
		todo := make(map[string]fullState, len(peers))
		for _, n := range peers {
			old := r.retry[n.Name]
			todo[n.Name] = fullState{Proxies: append(old.Proxies, fs.Proxies...), Votes: append(old.Votes, fs.Votes...)}
			delete(r.retry, n.Name)
		}
		r.mu.Unlock()
		var wg sync.WaitGroup
		for _, n := range peers {
			wg.Add(1)
			go func(n memberlist.Node, fs fullState) {
				defer wg.Done()
				if err := r.sendDirect(ml, &n, fs); err != nil {
					r.log.Debug("gossip: direct batch failed; retrying next round", "member", n.Name, "err", err)
					if len(fs.Proxies)+len(fs.Votes) <= maxRetry {
						r.mu.Lock()
						old := r.retry[n.Name]
						r.retry[n.Name] = fullState{Proxies: append(fs.Proxies, old.Proxies...), Votes: append(fs.Votes, old.Votes...)}
						r.mu.Unlock()
						r.kick()
					}
				}
			}(n, todo[n.Name])
		}
		wg.Wait()
	}
}

// maxRetry bounds what is kept for a peer that cannot be reached.
const maxRetry = 100000

func (r *Ring) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// sendDirect sends fs to one member in chunks over TCP.
func (r *Ring) sendDirect(ml *memberlist.Memberlist, n *memberlist.Node, fs fullState) error {
	for len(fs.Proxies)+len(fs.Votes) > 0 {
		var chunk fullState
		k := min(len(fs.Proxies), directBatch)
		chunk.Proxies, fs.Proxies = fs.Proxies[:k], fs.Proxies[k:]
		m := min(len(fs.Votes), directBatch-k)
		chunk.Votes, fs.Votes = fs.Votes[:m], fs.Votes[m:]
		b, _ := json.Marshal(chunk)
		msg := append([]byte{msgBatch}, b...)
		if err := ml.SendReliable(n, msg); err != nil {
			return err
		}
		r.Stats.BytesOut.Add(int64(len(msg)))
	}
	return nil
}

func (r *Ring) broadcast(name string, msg []byte) {
	if len(msg) > maxMsg {
		r.log.Warn("gossip entry too large for a packet; it spreads by push/pull only", "entry", name, "bytes", len(msg))
		return
	}
	r.queue.QueueBroadcast(&bcast{name: name, msg: msg})
}

// QueuedBroadcasts is the broadcast queue depth.
func (r *Ring) QueuedBroadcasts() int { return r.queue.NumQueued() }

// Leave announces a graceful leave and stops gossip.
func (r *Ring) Leave(timeout time.Duration) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.stop)
	r.mu.Unlock()
	err := r.ml.Leave(timeout)
	if serr := r.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Kill stops gossip without a leave message, as a crash would.
func (r *Ring) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		close(r.stop)
		_ = r.ml.Shutdown()
	}
}

type bcast struct {
	name string
	msg  []byte
}

func (b *bcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *bcast) Message() []byte                       { return b.msg }
func (b *bcast) Finished()                             {}
func (b *bcast) Name() string                          { return b.name }

// delegate plugs the state into memberlist.
type delegate Ring

func (d *delegate) NodeMeta(int) []byte { return nil }

// NotifyMsg merges a broadcast and, on first receipt (it changed our
// state), re-broadcasts it: memberlist never re-gossips user messages.
func (d *delegate) NotifyMsg(b []byte) {
	r := (*Ring)(d)
	r.Stats.BytesIn.Add(int64(len(b)))
	if len(b) > 0 && b[0] == msgBatch {
		n, err := r.state.MergeEncoded(b[1:])
		if err != nil {
			r.log.Warn("gossip: bad batch dropped", "err", err)
			return
		}
		if n > 0 {
			r.Stats.Merges.Add(int64(n))
			r.cfg.OnChange()
		}
		return
	}
	m, err := decodeMsg(b)
	if err != nil {
		r.log.Warn("gossip: bad message dropped", "err", err)
		return
	}
	var changed bool
	var name string
	switch {
	case m.proxy != nil:
		changed, name = r.state.MergeProxy(*m.proxy), "p/"+m.proxy.ID
	case m.vote != nil:
		changed, name = r.state.MergeVote(*m.vote), "v/"+m.vote.Endpoint+"|"+m.vote.Checker
	}
	if changed {
		r.Stats.Rebroadcasts.Add(1)
		r.queue.QueueBroadcast(&bcast{name: name, msg: bytes.Clone(b)})
		r.cfg.OnChange()
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	r := (*Ring)(d)
	out := r.queue.GetBroadcasts(overhead, limit)
	for _, b := range out {
		r.Stats.BytesOut.Add(int64(len(b)))
	}
	return out
}

func (d *delegate) LocalState(bool) []byte {
	r := (*Ring)(d)
	b := r.state.Encode()
	r.Stats.BytesOut.Add(int64(len(b)))
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, _ bool) {
	r := (*Ring)(d)
	r.Stats.BytesIn.Add(int64(len(buf)))
	n, err := r.state.MergeEncoded(buf)
	if err != nil {
		r.log.Warn("gossip: bad remote state", "err", err)
		return
	}
	if n > 0 {
		r.Stats.Merges.Add(int64(n))
		r.cfg.OnChange()
	}
}

type events Ring

func (e *events) NotifyJoin(n *memberlist.Node) {
	r := (*Ring)(e)
	r.mu.Lock()
	r.peers[n.Name] = memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port}
	r.mu.Unlock()
	r.log.Info("ring member joined", "member", n.Name, "addr", n.Address())
	r.cfg.OnChange()
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	r := (*Ring)(e)
	r.mu.Lock()
	delete(r.peers, n.Name)
	r.mu.Unlock()
	r.log.Info("ring member left", "member", n.Name, "addr", n.Address())
	r.cfg.OnChange()
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	r := (*Ring)(e)
	r.mu.Lock()
	r.peers[n.Name] = memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port}
	r.mu.Unlock()
	r.cfg.OnChange()
}

// logWriter routes memberlist's "[LEVEL] memberlist: ..." lines to slog.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	lvl := slog.LevelDebug
	switch {
	case bytes.Contains(p, []byte("[ERR]")):
		lvl = slog.LevelWarn
	case bytes.Contains(p, []byte("[WARN]")):
		lvl = slog.LevelInfo
	}
	w.log.Log(context.Background(), lvl, "memberlist", "msg", line)
	return len(p), nil
}
