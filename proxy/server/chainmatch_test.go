package server

import (
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustMatch(t *testing.T, fm *listenerv3.FilterChainMatch) chainMatch {
	t.Helper()
	m, err := compileMatch(fm)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func cr(a string, n uint32) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: a, PrefixLen: wrapperspb.UInt32(n)}
}

func key(src string, srcPort uint16, dst string, dstPort uint16) connKey {
	return connKey{src: netip.MustParseAddr(src), srcPort: srcPort, dst: netip.MustParseAddr(dst), dstPort: dstPort}
}

func TestPickFollowsEnvoyOrder(t *testing.T) {
	chains := map[string]*listenerv3.FilterChainMatch{
		"any":          {},
		"port-80":      {DestinationPort: wrapperspb.UInt32(80)},
		"port-80-10/8": {DestinationPort: wrapperspb.UInt32(80), PrefixRanges: []*corev3.CidrRange{cr("10.0.0.0", 8)}},
		"src-ports":    {DestinationPort: wrapperspb.UInt32(81), SourcePorts: []uint32{1000, 1001}},
		"port-81":      {DestinationPort: wrapperspb.UInt32(81)},
		"direct":       {DestinationPort: wrapperspb.UInt32(82), DirectSourcePrefixRanges: []*corev3.CidrRange{cr("192.168.0.0", 16)}},
		"direct-long":  {DestinationPort: wrapperspb.UInt32(82), DirectSourcePrefixRanges: []*corev3.CidrRange{cr("192.168.1.0", 24)}},
		"external":     {DestinationPort: wrapperspb.UInt32(83), SourceType: listenerv3.FilterChainMatch_EXTERNAL},
		"local":        {DestinationPort: wrapperspb.UInt32(83), SourceType: listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK},
		"v6":           {DestinationPort: wrapperspb.UInt32(84), PrefixRanges: []*corev3.CidrRange{cr("::1", 128)}},
	}
	lc := &listenerConfig{def: &chainConfig{name: "default"}}
	for name, fm := range chains {
		lc.chains = append(lc.chains, &chainConfig{name: name, match: mustMatch(t, fm)})
	}
	for _, c := range []struct {
		k    connKey
		want string
	}{
		{key("10.1.1.1", 5, "10.2.2.2", 80), "port-80-10/8"}, // port, then the prefix
		{key("10.1.1.1", 5, "11.2.2.2", 80), "port-80"},      // port; the prefix chain drops out
		{key("10.1.1.1", 5, "10.2.2.2", 8080), "any"},        // no port chain: the wildcard
		{key("10.1.1.1", 1001, "10.2.2.2", 81), "src-ports"}, // source port is the last step
		{key("10.1.1.1", 999, "10.2.2.2", 81), "port-81"},
		{key("192.168.1.9", 5, "10.2.2.2", 82), "direct-long"}, // longest source prefix
		{key("192.168.2.9", 5, "10.2.2.2", 82), "direct"},
		{key("172.16.0.1", 5, "10.2.2.2", 82), "default"},  // port chains only, none matches: no backtracking to "any"
		{key("172.16.0.1", 5, "10.2.2.2", 83), "external"}, // source ≠ destination, not loopback
		{key("10.2.2.2", 5, "10.2.2.2", 83), "local"},      // same IP
		{key("127.0.0.5", 5, "10.2.2.2", 83), "local"},     // loopback
		{key("::1", 5, "::1", 84), "v6"},
	} {
		got := lc.pick(c.k)
		if got == nil || got.name != c.want {
			t.Errorf("%+v: picked %v, want %s", c.k, got, c.want)
		}
	}
	lc.def = nil
	if got := lc.pick(key("172.16.0.1", 5, "10.2.2.2", 82)); got != nil {
		t.Errorf("without a default chain an unmatched connection must get no chain, got %s", got.name)
	}
}

func TestCompileMatchErrors(t *testing.T) {
	for _, c := range []struct {
		fm   *listenerv3.FilterChainMatch
		want string
	}{
		{&listenerv3.FilterChainMatch{PrefixRanges: []*corev3.CidrRange{{AddressPrefix: "10.0.0.300"}}}, `prefix_ranges[0].address_prefix "10.0.0.300"`},
		{&listenerv3.FilterChainMatch{SourcePrefixRanges: []*corev3.CidrRange{cr("10.0.0.0", 40)}}, "source_prefix_ranges[0].prefix_len 40"},
		{&listenerv3.FilterChainMatch{ServerNames: []string{"a.example"}}, "server_names"},
	} {
		_, err := compileMatch(c.fm)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.fm, err, c.want)
		}
	}
	a := mustMatch(t, &listenerv3.FilterChainMatch{SourcePorts: []uint32{1, 2}})
	b := mustMatch(t, &listenerv3.FilterChainMatch{SourcePorts: []uint32{2, 3}})
	d := mustMatch(t, &listenerv3.FilterChainMatch{SourcePorts: []uint32{4}})
	if !a.overlaps(&b) || a.overlaps(&d) {
		t.Errorf("overlap: a/b %v a/d %v", a.overlaps(&b), a.overlaps(&d))
	}
}
