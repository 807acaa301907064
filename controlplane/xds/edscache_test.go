package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// portsModel: one service per entry of ports (svc-0, svc-1, ...), each
// with one endpoint on that port; a negative port leaves the service out.
func portsModel(ports ...int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i, p := range ports {
		if p >= 0 {
			fmt.Fprintf(&b, "  - {name: svc-%d, endpoints: [{address: 10.0.0.%d, port: %d}]}\n", i, i+1, p)
		}
	}
	return b.String()
}

// deltaEDS is a raw delta EDS stream that ACKs everything it receives.
type deltaEDS struct {
	t     *testing.T
	st    discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	nonce string // of the last response: Envoy sends it on every request
}

func openDeltaEDS(t *testing.T, e *env, conn *grpc.ClientConn, first *discoveryv3.DeltaDiscoveryRequest) *deltaEDS {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaEDS{t: t, st: st}
	first.TypeUrl = resourcev3.EndpointType
	d.send(first)
	return d
}

func (d *deltaEDS) send(r *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	r.TypeUrl = resourcev3.EndpointType
	if r.ResponseNonce == "" {
		r.ResponseNonce = d.nonce
	}
	if err := d.st.Send(r); err != nil {
		d.t.Fatal(err)
	}
}

// recv returns the next response as "name@port,... removed=..." and ACKs it.
func (d *deltaEDS) recv() (string, *discoveryv3.DeltaDiscoveryResponse) {
	d.t.Helper()
	r, err := d.st.Recv()
	if err != nil {
		d.t.Fatal(err)
	}
	d.nonce = r.GetNonce()
	d.send(&discoveryv3.DeltaDiscoveryRequest{})
	var got []string
	for _, res := range r.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := res.GetResource().UnmarshalTo(&cla); err != nil {
			d.t.Fatal(err)
		}
		port := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()
		got = append(got, fmt.Sprintf("%s@%d", res.GetName(), port))
	}
	sort.Strings(got)
	removed := append([]string(nil), r.GetRemovedResources()...)
	sort.Strings(removed)
	return strings.Join(got, ",") + " removed=" + strings.Join(removed, ","), r
}

func (d *deltaEDS) expect(want string) *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	got, r := d.recv()
	if got != want {
		d.t.Fatalf("got %q, want %q", got, want)
	}
	return r
}

// TestEDSCacheDeltaFollowsSubscriptions: a delta client gets exactly the
// changes to the names it follows. "Nothing was sent" is shown by order:
// the next message on the stream is a later change.
func TestEDSCacheDeltaFollowsSubscriptions(t *testing.T) {
	e := startServer(t)
	e.apply(portsModel(80, 80, 80), nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	d := openDeltaEDS(t, e, conn, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"svc-0", "svc-9"}})
	d.expect("svc-0@80 removed=")
	e.apply(portsModel(80, 81, 80), nil) // not followed: nothing sent
	e.apply(portsModel(82, 81, 80), nil)
	d.expect("svc-0@82 removed=")

	// Swap subscriptions: the new name comes at once, the old one goes quiet.
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"svc-1"}, ResourceNamesUnsubscribe: []string{"svc-0"}})
	d.expect("svc-1@81 removed=")
	e.apply(portsModel(83, 81, 80), nil)
	e.apply(portsModel(83, 84, 80), nil)
	d.expect("svc-1@84 removed=")

	// Subscribing again to an unchanged name sends it again.
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"svc-0"}})
	d.expect("svc-0@83 removed=")

	// A name that appears later is sent when it does; removal is reported.
	e.apply(portsModel(83, 84, 80, 85, -1, -1, -1, -1, -1, 86), nil)
	d.expect("svc-9@86 removed=")
	e.apply(portsModel(83, -1, 80), nil)
	d.expect(" removed=svc-1,svc-9")

	// A reconnecting client that already has svc-0's version is not sent it
	// again: the first message on the new stream is svc-0's next change.
	versions := map[string]string{}
	d2 := openDeltaEDS(t, e, conn, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"svc-2"}})
	first := d2.expect("svc-2@80 removed=")
	versions["svc-2"] = first.GetResources()[0].GetVersion()
	d3 := openDeltaEDS(t, e, conn, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"svc-2", "svc-0"}, InitialResourceVersions: versions})
	d3.expect("svc-0@83 removed=")
	e.apply(portsModel(83, -1, 87), nil)
	d3.expect("svc-2@87 removed=")
	d2.expect("svc-2@87 removed=")

	// A wildcard client gets everything, then every change.
	w := openDeltaEDS(t, e, conn, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"*"}})
	w.expect("svc-0@83,svc-2@87 removed=")
	e.apply(portsModel(83, 88, -1), nil)
	w.expect("svc-1@88 removed=svc-2")
}

// claPort is a CLA's name and its first endpoint's port.
func claPort(t *testing.T, a *anypb.Any) (string, uint32) {
	var cla endpointv3.ClusterLoadAssignment
	if err := a.UnmarshalTo(&cla); err != nil {
		t.Error(err)
		return "", 0
	}
	return cla.GetClusterName(), cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()
}

// TestEDSCacheChurn: delta and SotW clients change their subscriptions at
// random while endpoints change; run with -race. Each client must end up
// with exactly the final version of every name it follows.
func TestEDSCacheChurn(t *testing.T) {
	const services, clients, rounds = 12, 16, 30
	e := startServer(t)
	ports := make([]int, services)
	for i := range ports {
		ports[i] = 1000
	}
	e.apply(portsModel(ports...), nil)
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 120*time.Second)
	defer cancel()

	type view struct {
		mu   sync.Mutex
		have map[string]uint32 // name -> port last received
		subs map[string]bool   // followed names
	}
	names := func(subs map[string]bool) []string {
		var n []string
		for k := range subs {
			n = append(n, k)
		}
		sort.Strings(n)
		return n
	}
	views := make([]*view, clients)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i := range clients {
		v := &view{have: map[string]uint32{}, subs: map[string]bool{}}
		views[i] = v
		delta := i%2 == 0
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		wg.Go(func() {
			ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
			if delta {
				st, err := ads.DeltaAggregatedResources(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				var nonce string // last received, sent on every request as Envoy does
				go func() {      // churn the subscription until the updates end
					for k := 0; ; k++ {
						select {
						case <-done:
							return
						case <-time.After(time.Millisecond):
						}
						n := fmt.Sprintf("svc-%d", rng.IntN(services))
						v.mu.Lock()
						req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce}
						if v.subs[n] {
							delete(v.subs, n)
							delete(v.have, n)
							req.ResourceNamesUnsubscribe = []string{n}
						} else {
							v.subs[n] = true
							req.ResourceNamesSubscribe = []string{n}
						}
						err := st.Send(req) // under v.mu: the server sees requests in this order
						v.mu.Unlock()
						if err != nil {
							return
						}
					}
				}()
				for {
					r, err := st.Recv()
					if err != nil {
						return
					}
					v.mu.Lock()
					for _, res := range r.GetResources() {
						if name, port := claPort(t, res.GetResource()); v.subs[name] {
							v.have[name] = port
						}
					}
					for _, n := range r.GetRemovedResources() {
						delete(v.have, n)
					}
					nonce = r.GetNonce()
					err = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.GetNonce()})
					v.mu.Unlock()
					if err != nil {
						return
					}
				}
			}
			st, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			v.mu.Lock()
			v.subs[fmt.Sprintf("svc-%d", i%services)] = true
			err = st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names(v.subs)})
			v.mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				v.mu.Lock()
				for _, a := range r.GetResources() {
					if name, port := claPort(t, a); v.subs[name] { // else sent before the client's last request
						v.have[name] = port
					}
				}
				// SotW requests carry the whole list: churn it on each ACK
				// while the updates run.
				select {
				case <-done:
				default:
					n := fmt.Sprintf("svc-%d", rng.IntN(services))
					if v.subs[n] && len(v.subs) > 1 {
						delete(v.subs, n)
						delete(v.have, n)
					} else {
						v.subs[n] = true
					}
				}
				err = st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names(v.subs)})
				v.mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for k := range rounds {
		for range 3 {
			ports[rng.IntN(services)] = 1001 + k
		}
		e.apply(portsModel(ports...), nil)
	}
	close(done)
	// One last change to every service, so every client, whatever it
	// follows, has something to receive after its churn stopped.
	for i := range ports {
		ports[i] = 2000 + i
	}
	e.apply(portsModel(ports...), nil)
	deadline := time.Now().Add(60 * time.Second)
	for i, v := range views {
		for {
			v.mu.Lock()
			ok := len(v.have) == len(v.subs)
			for n := range v.subs {
				var idx int
				fmt.Sscanf(n, "svc-%d", &idx)
				if v.have[n] != uint32(2000+idx) {
					ok = false
				}
			}
			state := fmt.Sprint(v.have, " follows ", names(v.subs))
			v.mu.Unlock()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client %d never converged: %s", i, state)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	cancel()
	wg.Wait()
}

// TestEDSCacheAssumptionsPinned: edsCache updates the known-versions maps
// it built in place, which is safe only because go-control-plane v0.14's
// SotW and delta servers touch a subscription's map after cancelling its
// watch (see nextKnown). A new go-control-plane version must be re-read
// before this test is changed.
func TestEDSCacheAssumptionsPinned(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod") // test binaries carry no module list
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "github.com/envoyproxy/go-control-plane" {
			if f[1] != "v0.14.0" {
				t.Fatalf("go-control-plane is %s: re-check edsCache.nextKnown's in-place update against its sotw/delta servers", f[1])
			}
			return
		}
	}
	t.Fatal("go-control-plane not required in go.mod")
}
