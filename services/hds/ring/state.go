// Package ring shares HDS state between replicas over a hashicorp/memberlist
// cluster: which proxy is connected to which replica, and every checker's
// latest vote per endpoint. The state is a last-writer-wins map per entry
// (newest timestamp wins, ties broken by writer name), with tombstones for
// disconnects and withdrawn votes, so merges are idempotent and commutative
// and every replica converges to the same content.
package ring

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ProxyEntry says a proxy (HDS client) is connected to a replica.
type ProxyEntry struct {
	ID      string `json:"id"`
	Replica string `json:"r"`
	Stream  uint64 `json:"s"`           // stream id, unique within the replica process
	Zone    string `json:"z,omitempty"` // from the node's locality
	Caps    uint8  `json:"c"`           // catalog.Protocol bit set
	Live    bool   `json:"l"`           // false: tombstone, disconnected
	Stale   bool   `json:"st,omitempty"`
	TS      int64  `json:"t"` // unix nanoseconds of the write
}

func (e ProxyEntry) newer(o ProxyEntry) bool {
	if e.TS != o.TS {
		return e.TS > o.TS
	}
	if e.Replica != o.Replica {
		return e.Replica > o.Replica
	}
	// Same writer and time cannot happen with Now(); order by content anyway
	// so that merging stays commutative whatever arrives.
	return bytes.Compare(encodeProxy(e), encodeProxy(o)) > 0
}

// VoteEntry is one checker's current view of one endpoint. Status 0 is a
// tombstone: the checker no longer reports the endpoint.
type VoteEntry struct {
	Endpoint string `json:"e"`
	Checker  string `json:"k"`
	Status   uint8  `json:"v"`
	TS       int64  `json:"t"`
	Origin   string `json:"o"` // replica that wrote it
}

func (e VoteEntry) newer(o VoteEntry) bool {
	if e.TS != o.TS {
		return e.TS > o.TS
	}
	if e.Origin != o.Origin {
		return e.Origin > o.Origin
	}
	return bytes.Compare(encodeVote(e), encodeVote(o)) > 0
}

// State is the replicated map. It is safe for concurrent use.
type State struct {
	mu      sync.RWMutex
	proxies map[string]ProxyEntry
	votes   map[string]map[string]VoteEntry // endpoint → checker → vote
	byCheck map[string]map[string]struct{}  // checker → endpoints it voted on
	last    int64
}

// NewState returns an empty state.
func NewState() *State {
	return &State{proxies: map[string]ProxyEntry{}, votes: map[string]map[string]VoteEntry{}, byCheck: map[string]map[string]struct{}{}}
}

// Now returns a write timestamp strictly greater than any this state has
// issued or seen, so a local write always supersedes what it replaces even
// when clocks are coarse.
func (s *State) Now() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nowLocked()
}

func (s *State) nowLocked() int64 {
	t := time.Now().UnixNano()
	if t <= s.last {
		t = s.last + 1
	}
	s.last = t
	return t
}

func (s *State) see(ts int64) {
	if ts > s.last {
		s.last = ts
	}
}

// MergeProxy applies e if it is newer; it reports whether anything changed.
func (s *State) MergeProxy(e ProxyEntry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mergeProxyLocked(e)
}

func (s *State) mergeProxyLocked(e ProxyEntry) bool {
	if e.ID == "" {
		return false
	}
	if cur, ok := s.proxies[e.ID]; ok && !e.newer(cur) {
		return false
	}
	s.see(e.TS)
	s.proxies[e.ID] = e
	return true
}

// MergeVote applies e if it is newer; it reports whether anything changed.
func (s *State) MergeVote(e VoteEntry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mergeVoteLocked(e)
}

func (s *State) mergeVoteLocked(e VoteEntry) bool {
	if e.Endpoint == "" || e.Checker == "" {
		return false
	}
	m := s.votes[e.Endpoint]
	if cur, ok := m[e.Checker]; ok && !e.newer(cur) {
		return false
	}
	if m == nil {
		m = map[string]VoteEntry{}
		s.votes[e.Endpoint] = m
	}
	s.see(e.TS)
	m[e.Checker] = e
	c := s.byCheck[e.Checker]
	if c == nil {
		c = map[string]struct{}{}
		s.byCheck[e.Checker] = c
	}
	c[e.Endpoint] = struct{}{}
	return true
}

// Proxy returns one proxy entry.
func (s *State) Proxy(id string) (ProxyEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.proxies[id]
	return e, ok
}

// Proxies returns every proxy entry, tombstones included.
func (s *State) Proxies() []ProxyEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ProxyEntry, 0, len(s.proxies))
	for _, e := range s.proxies {
		out = append(out, e)
	}
	return out
}

// Vote returns one vote (tombstones included).
func (s *State) Vote(endpoint, checker string) (VoteEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.votes[endpoint][checker]
	return e, ok
}

// VotesOf returns the live votes of one checker.
func (s *State) VotesOf(checker string) []VoteEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []VoteEntry
	for ep := range s.byCheck[checker] {
		if v := s.votes[ep][checker]; v.Status != 0 {
			out = append(out, v)
		}
	}
	return out
}

// EachVote calls f for every live vote, under the read lock: f must not
// call back into the state.
func (s *State) EachVote(f func(VoteEntry)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, m := range s.votes {
		for _, v := range m {
			if v.Status != 0 {
				f(v)
			}
		}
	}
}

// Counts returns the number of proxy entries and vote entries held.
func (s *State) Counts() (proxies, votes int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, m := range s.votes {
		votes += len(m)
	}
	return len(s.proxies), votes
}

// GC forgets, when older than horizon: tombstones, entries of proxies
// whose replica is no longer in the ring (alive reports membership; nil
// means all are), and votes of checkers that are gone. A peer that still
// holds them may send them back; they are harmless (tombstones, or entries
// nobody counts) and go again.
func (s *State) GC(horizon time.Duration, alive func(replica string) bool) int {
	cut := time.Now().Add(-horizon).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, p := range s.proxies {
		if p.TS < cut && (!p.Live || (alive != nil && !alive(p.Replica))) {
			delete(s.proxies, id)
			n++
		}
	}
	for ep, m := range s.votes {
		for ck, v := range m {
			p, ok := s.proxies[ck]
			if v.TS < cut && (v.Status == 0 || !ok || !p.Live) {
				delete(m, ck)
				delete(s.byCheck[ck], ep)
				n++
			}
		}
		if len(m) == 0 {
			delete(s.votes, ep)
		}
	}
	for ck, m := range s.byCheck {
		if len(m) == 0 {
			delete(s.byCheck, ck)
		}
	}
	return n
}

// wire formats: one message per entry for broadcasts, everything for push/pull.
const (
	msgProxy byte = 'p'
	msgVote  byte = 'v'
	msgBatch byte = 'b' // a fullState of local changes, sent directly
)

type fullState struct {
	Proxies []ProxyEntry `json:"p"`
	Votes   []VoteEntry  `json:"v"`
}

func encodeProxy(e ProxyEntry) []byte {
	b, _ := json.Marshal(e)
	return append([]byte{msgProxy}, b...)
}

func encodeVote(e VoteEntry) []byte {
	b, _ := json.Marshal(e)
	return append([]byte{msgVote}, b...)
}

// decoded is one broadcast message.
type decoded struct {
	proxy *ProxyEntry
	vote  *VoteEntry
}

func decodeMsg(b []byte) (decoded, error) {
	if len(b) < 2 {
		return decoded{}, errors.New("short message")
	}
	switch b[0] {
	case msgProxy:
		var e ProxyEntry
		if err := json.Unmarshal(b[1:], &e); err != nil {
			return decoded{}, fmt.Errorf("proxy entry: %w", err)
		}
		return decoded{proxy: &e}, nil
	case msgVote:
		var e VoteEntry
		if err := json.Unmarshal(b[1:], &e); err != nil {
			return decoded{}, fmt.Errorf("vote entry: %w", err)
		}
		return decoded{vote: &e}, nil
	}
	return decoded{}, fmt.Errorf("unknown message type %q", b[0])
}

// Encode returns the full state for push/pull.
func (s *State) Encode() []byte {
	s.mu.RLock()
	fs := fullState{Proxies: make([]ProxyEntry, 0, len(s.proxies))}
	for _, p := range s.proxies {
		fs.Proxies = append(fs.Proxies, p)
	}
	for _, m := range s.votes {
		for _, v := range m {
			fs.Votes = append(fs.Votes, v)
		}
	}
	s.mu.RUnlock()
	b, _ := json.Marshal(fs)
	return b
}

// MergeEncoded merges a full state from a peer and returns how many entries
// changed.
func (s *State) MergeEncoded(b []byte) (int, error) {
	var fs fullState
	if err := json.Unmarshal(b, &fs); err != nil {
		return 0, fmt.Errorf("remote state: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range fs.Proxies {
		if s.mergeProxyLocked(p) {
			n++
		}
	}
	for _, v := range fs.Votes {
		if s.mergeVoteLocked(v) {
			n++
		}
	}
	return n, nil
}
