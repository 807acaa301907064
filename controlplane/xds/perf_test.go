package xds

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/controlplane/model"
	"github.com/sidemesh/sidemesh/controlplane/translate"
)

// perfModel: services × endpoints; shift moves one endpoint of service 0.
func perfModel(services, endpoints, shift int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for s := 0; s < services; s++ {
		fmt.Fprintf(&b, "  - name: svc-%d\n    protocol: grpc\n    endpoints:\n", s)
		for e := 0; e < endpoints; e++ {
			port := 10000 + e
			if s == 0 && e == 0 {
				port += shift
			}
			fmt.Fprintf(&b, "      - {address: 10.%d.%d.%d, port: %d, zone: zone-%d}\n", s/250, s%250, e+1, port, e%3)
		}
	}
	return b.String()
}

type perfClient struct {
	got chan time.Time // when the changed CLA arrived (ACK sent right after)
}

// TestPushFanOut measures change-to-all-clients time. It is a measurement,
// not a pass/fail check: run it with SIDEMESH_XDS_PERF=1 (sizes via
// SIDEMESH_XDS_PERF_CLIENTS, _SERVICES, _ENDPOINTS).
func TestPushFanOut(t *testing.T) {
	if os.Getenv("SIDEMESH_XDS_PERF") == "" {
		t.Skip("set SIDEMESH_XDS_PERF=1 to measure push fan-out")
	}
	env := func(k string, d int) int {
		if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
			return v
		}
		return d
	}
	clients := env("SIDEMESH_XDS_PERF_CLIENTS", 1000)
	services := env("SIDEMESH_XDS_PERF_SERVICES", 500)
	endpoints := env("SIDEMESH_XDS_PERF_ENDPOINTS", 10)
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			e := startServer(t)
			e.apply(perfModel(services, endpoints, 0), nil)
			names := make([]string, services)
			for i := range names {
				names[i] = fmt.Sprintf("svc-%d", i)
			}
			var bytesAfter atomic.Int64
			var changed atomic.Bool
			var wg sync.WaitGroup
			ready := make(chan struct{}, clients)
			pcs := make([]*perfClient, clients)
			ctx, cancel := context.WithCancel(e.ctx)
			defer cancel()
			for i := range pcs {
				pcs[i] = &perfClient{got: make(chan time.Time, 1)}
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					if err := runPerfClient(ctx, e.addr, i, delta, names, pcs[i], ready, &changed, &bytesAfter); err != nil && ctx.Err() == nil {
						t.Errorf("client %d: %v", i, err)
					}
				}(i)
			}
			for i := 0; i < clients; i++ {
				select {
				case <-ready:
				case <-time.After(120 * time.Second):
					t.Fatalf("only %d/%d clients initialised", i, clients)
				}
			}
			changed.Store(true)
			start := time.Now()
			out := e.build(perfModel(services, endpoints, 1), nil)
			built := time.Since(start)
			start = time.Now() // latency counts from the moment the new config is handed to the server
			if err := e.srv.Apply(e.ctx, out); err != nil {
				t.Fatal(err)
			}
			applied := time.Since(start)
			fullEDS := 0
			for _, cla := range out.Endpoints {
				fullEDS += proto.Size(cla)
			}
			lat := make([]time.Duration, 0, clients)
			for _, pc := range pcs {
				select {
				case at := <-pc.got:
					lat = append(lat, at.Sub(start))
				case <-time.After(60 * time.Second):
					t.Fatalf("a client never got the change (%d did)", len(lat))
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
			t.Logf("%s: %d clients, %d services x %d endpoints, one endpoint changed: parse+translate %v, apply %v, p50 %v, p99 %v, max %v, bytes sent %d (%.0f per client; a full EDS state is %d bytes per client)",
				map[bool]string{false: "SotW", true: "delta"}[delta], clients, services, endpoints, built.Round(time.Millisecond), applied.Round(time.Millisecond),
				pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond),
				bytesAfter.Load(), float64(bytesAfter.Load())/float64(clients), fullEDS)
			if st, err := os.ReadFile("/proc/self/status"); err == nil {
				for _, l := range strings.Split(string(st), "\n") {
					if strings.HasPrefix(l, "VmHWM") {
						t.Logf("peak RSS of the whole test process (server and all clients): %s", strings.Join(strings.Fields(l)[1:], " "))
					}
				}
			}
			cancel()
			wg.Wait()
		})
	}
}

func runPerfClient(ctx context.Context, addr string, i int, delta bool, names []string, pc *perfClient, ready chan<- struct{}, changed *atomic.Bool, bytesAfter *atomic.Int64) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	node := &corev3.Node{Id: fmt.Sprintf("load-%d", i)}
	reported := false
	if delta {
		st, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			return err
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names}); err != nil {
			return err
		}
		init := map[string]bool{}
		for {
			r, err := st.Recv()
			if err != nil {
				return err
			}
			if changed.Load() {
				bytesAfter.Add(int64(proto.Size(r)))
			}
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}); err != nil {
				return err
			}
			if !changed.Load() {
				init[r.GetTypeUrl()] = true
				if len(init) == 2 && !reported {
					reported = true
					ready <- struct{}{}
				}
				continue
			}
			for _, res := range r.GetResources() {
				if res.GetName() == "svc-0" {
					pc.got <- time.Now()
				}
			}
		}
	}
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names}); err != nil {
		return err
	}
	init := map[string]bool{}
	for {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		if changed.Load() {
			bytesAfter.Add(int64(proto.Size(r)))
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
		if r.GetTypeUrl() == resourcev3.EndpointType {
			req.ResourceNames = names
		}
		if err := st.Send(req); err != nil {
			return err
		}
		if !changed.Load() {
			init[r.GetTypeUrl()] = true
			if len(init) == 2 && !reported {
				reported = true
				ready <- struct{}{}
			}
			continue
		}
		for _, res := range r.GetResources() {
			if r.GetTypeUrl() == resourcev3.EndpointType && strings.Contains(string(res.GetValue()), "svc-0\x12") {
				pc.got <- time.Now()
			}
		}
	}
}

// BenchmarkApplyEndpointChange: the server-side cost of one endpoint change
// in a 500 × 10 mesh (translation excluded), with no clients connected.
func BenchmarkApplyEndpointChange(b *testing.B) {
	ctx := context.Background()
	s := New(ctx, testLog(nil), nil)
	outs := make([]*translate.Output, 2)
	for i := range outs {
		outs[i] = mustBuild(b, perfModel(500, 10, i))
	}
	if err := s.Apply(ctx, outs[0]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Apply(ctx, outs[(i+1)%2]); err != nil {
			b.Fatal(err)
		}
	}
}

func mustBuild(tb testing.TB, yaml string) *translate.Output {
	m, err := model.Parse(model.Source{Name: "perf.yaml", Data: []byte(yaml)})
	if err != nil {
		tb.Fatal(err)
	}
	out, err := translate.Build(m, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// BenchmarkParse: parsing (and validating) the 500 × 10 model.
func BenchmarkParse(b *testing.B) {
	data := []byte(perfModel(500, 10, 0))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := model.Parse(model.Source{Name: "perf.yaml", Data: data}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslate: translating the parsed 500 × 10 model.
func BenchmarkTranslate(b *testing.B) {
	m, err := model.Parse(model.Source{Name: "perf.yaml", Data: []byte(perfModel(500, 10, 0))})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := translate.Build(m, nil); err != nil {
			b.Fatal(err)
		}
	}
}
