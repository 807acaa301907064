package server

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// rawBuffer is the transport protocol Envoy assigns a connection when no
// listener filter detected one; we have no detecting listener filters.
const rawBuffer = "raw_buffer"

// chainMatch is a compiled FilterChainMatch.
type chainMatch struct {
	dstPort   uint32 // 0: any
	dstRanges []netip.Prefix
	transport string
	appProtos []string
	directSrc []netip.Prefix
	srcType   listenerv3.FilterChainMatch_ConnectionSourceType
	srcRanges []netip.Prefix
	srcPorts  []uint32
}

func (m *chainMatch) empty() bool {
	return m.dstPort == 0 && len(m.dstRanges) == 0 && m.transport == "" && len(m.appProtos) == 0 &&
		len(m.directSrc) == 0 && m.srcType == listenerv3.FilterChainMatch_ANY && len(m.srcRanges) == 0 && len(m.srcPorts) == 0
}

func compileMatch(fm *listenerv3.FilterChainMatch) (chainMatch, error) {
	var m chainMatch
	if fm == nil {
		return m, nil
	}
	if len(fm.GetServerNames()) > 0 {
		// SNI needs TLS inspection, which we do not have: a chain keyed
		// on it could never be chosen as the config intends.
		return m, fmt.Errorf("server_names %v: matching on SNI needs TLS, which is not supported", fm.GetServerNames())
	}
	m.dstPort = fm.GetDestinationPort().GetValue()
	var err error
	if m.dstRanges, err = prefixes("prefix_ranges", fm.GetPrefixRanges()); err != nil {
		return m, err
	}
	if m.directSrc, err = prefixes("direct_source_prefix_ranges", fm.GetDirectSourcePrefixRanges()); err != nil {
		return m, err
	}
	if m.srcRanges, err = prefixes("source_prefix_ranges", fm.GetSourcePrefixRanges()); err != nil {
		return m, err
	}
	m.transport = fm.GetTransportProtocol()
	m.appProtos = fm.GetApplicationProtocols()
	m.srcType = fm.GetSourceType()
	m.srcPorts = fm.GetSourcePorts()
	return m, nil
}

func prefixes(field string, rs []*corev3.CidrRange) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, r := range rs {
		a, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil {
			return nil, fmt.Errorf("%s[%d].address_prefix %q: %v", field, i, r.GetAddressPrefix(), err)
		}
		bits := int(r.GetPrefixLen().GetValue())
		if r.GetPrefixLen() == nil {
			bits = a.BitLen()
		}
		p, err := a.Unmap().Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("%s[%d].prefix_len %d: %v", field, i, bits, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// overlaps reports whether a connection could match both m and o at the
// same specificity in every criterion: Envoy rejects such listeners
// ("multiple filter chains with the same matching rules").
func (m *chainMatch) overlaps(o *chainMatch) bool {
	anyPrefix := func(a, b []netip.Prefix) bool {
		if len(a) == 0 || len(b) == 0 {
			return len(a) == 0 && len(b) == 0
		}
		for _, x := range a {
			if slices.Contains(b, x) {
				return true
			}
		}
		return false
	}
	anyPort := func(a, b []uint32) bool {
		if len(a) == 0 || len(b) == 0 {
			return len(a) == 0 && len(b) == 0
		}
		for _, x := range a {
			if slices.Contains(b, x) {
				return true
			}
		}
		return false
	}
	anyString := func(a, b []string) bool {
		if len(a) == 0 || len(b) == 0 {
			return len(a) == 0 && len(b) == 0
		}
		for _, x := range a {
			if slices.Contains(b, x) {
				return true
			}
		}
		return false
	}
	return m.dstPort == o.dstPort && anyPrefix(m.dstRanges, o.dstRanges) && m.transport == o.transport &&
		anyString(m.appProtos, o.appProtos) && anyPrefix(m.directSrc, o.directSrc) && m.srcType == o.srcType &&
		anyPrefix(m.srcRanges, o.srcRanges) && anyPort(m.srcPorts, o.srcPorts)
}

// connKey is what a filter chain is selected by.
type connKey struct {
	dst, src         netip.Addr
	dstPort, srcPort uint16
}

func keyOf(local, remote net.Addr) connKey {
	var k connKey
	if ap, err := netip.ParseAddrPort(local.String()); err == nil {
		k.dst, k.dstPort = ap.Addr().Unmap(), ap.Port()
	}
	if ap, err := netip.ParseAddrPort(remote.String()); err == nil {
		k.src, k.srcPort = ap.Addr().Unmap(), ap.Port()
	}
	return k
}

// pick selects the filter chain for a connection the way Envoy does: the
// criteria are applied in order (destination port, destination IP, server
// name, transport protocol, application protocols, direct source IP,
// source type, source IP, source port); at each step only the chains with
// the most specific match survive, and chains that leave the criterion
// empty survive only when no chain matched it specifically. There is no
// backtracking. When nothing survives, the default chain (or nil: the
// connection is closed).
func (lc *listenerConfig) pick(k connKey) *chainConfig {
	cands := lc.chains
	narrow := func(score func(m *chainMatch) int) {
		best := -1
		for _, c := range cands {
			best = max(best, score(&c.match))
		}
		if best < 0 {
			cands = nil
			return
		}
		out := make([]*chainConfig, 0, len(cands))
		for _, c := range cands {
			if score(&c.match) == best {
				out = append(out, c)
			}
		}
		cands = out
	}
	// Scores: -1 no match, 0 the criterion is empty (wildcard), >0 specific.
	prefixScore := func(ps []netip.Prefix, a netip.Addr) int {
		if len(ps) == 0 {
			return 0
		}
		best := -1
		for _, p := range ps {
			if a.IsValid() && p.Contains(a) {
				best = max(best, p.Bits()+1)
			}
		}
		return best
	}
	narrow(func(m *chainMatch) int {
		switch m.dstPort {
		case 0:
			return 0
		case uint32(k.dstPort):
			return 1
		}
		return -1
	})
	narrow(func(m *chainMatch) int { return prefixScore(m.dstRanges, k.dst) })
	narrow(func(m *chainMatch) int {
		switch m.transport {
		case "":
			return 0
		case rawBuffer:
			return 1
		}
		return -1
	})
	// No listener filter detects ALPN here, so only chains without
	// application_protocols can match (as in Envoy without one).
	narrow(func(m *chainMatch) int {
		if len(m.appProtos) == 0 {
			return 0
		}
		return -1
	})
	// Without proxy_protocol the direct source is the source.
	narrow(func(m *chainMatch) int { return prefixScore(m.directSrc, k.src) })
	local := k.src.IsLoopback() || k.src == k.dst
	narrow(func(m *chainMatch) int {
		switch {
		case m.srcType == listenerv3.FilterChainMatch_ANY:
			return 0
		case m.srcType == listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK && local,
			m.srcType == listenerv3.FilterChainMatch_EXTERNAL && !local:
			return 1
		}
		return -1
	})
	narrow(func(m *chainMatch) int { return prefixScore(m.srcRanges, k.src) })
	narrow(func(m *chainMatch) int {
		if len(m.srcPorts) == 0 {
			return 0
		}
		if slices.Contains(m.srcPorts, uint32(k.srcPort)) {
			return 1
		}
		return -1
	})
	if len(cands) == 0 {
		return lc.def
	}
	return cands[0]
}
