package k8ssource

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// client-go's fake clientset stands in for an API server: no cluster runs
// here. It drives the real informers, listers and event handlers.

func ptr[T any](v T) *T { return &v }

func service(name string, ports ...string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "mesh"}}
	for i, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: p, Port: int32(80 + i)})
	}
	return s
}

type ep struct {
	addr        string
	zone        string
	ready, term bool
}

func slice(name, svc string, port int32, portName string, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "mesh", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr(portName), Port: ptr(port)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			Zone:       ptr(e.zone),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Terminating: ptr(e.term)},
		})
	}
	return s
}

type recorder struct {
	mu    sync.Mutex
	snaps []Snapshot
}

func (r *recorder) add(s Snapshot) {
	r.mu.Lock()
	r.snaps = append(r.snaps, s)
	r.mu.Unlock()
}

// waitFor polls until the latest snapshot has want for svc.
func (r *recorder) waitFor(t *testing.T, svc string, want []Endpoint) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last Snapshot
	for time.Now().Before(deadline) {
		r.mu.Lock()
		if n := len(r.snaps); n > 0 {
			last = r.snaps[n-1]
		}
		r.mu.Unlock()
		if got, ok := last[svc]; ok && reflect.DeepEqual(got, want) || (len(want) == 0 && ok && len(got) == 0) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("service %s: last snapshot %v, want %v", svc, last[svc], want)
}

func TestInformersDriveSnapshots(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewSimpleClientset(
		service("web", "http"),
		slice("web-1", "web", 15101, "http", ep{"10.0.0.2", "zone-a", true, false}, ep{"10.0.0.3", "zone-b", false, false}),
	)
	rec := &recorder{}
	src := New(client, "mesh", slog.New(slog.NewTextHandler(io.Discard, nil)), 10*time.Millisecond, rec.add)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()

	// Not-ready endpoints are left out.
	rec.waitFor(t, "web", []Endpoint{{"10.0.0.2", 15101, "zone-a"}})

	// Add: a second slice of the same service.
	cs := client.DiscoveryV1().EndpointSlices("mesh")
	if _, err := cs.Create(ctx, slice("web-2", "web", 15101, "http", ep{"10.0.1.9", "zone-b", true, false}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "web", []Endpoint{{"10.0.0.2", 15101, "zone-a"}, {"10.0.1.9", 15101, "zone-b"}})

	// Update: the first pod starts terminating; the second becomes ready.
	if _, err := cs.Update(ctx, slice("web-1", "web", 15101, "http", ep{"10.0.0.2", "zone-a", true, true}, ep{"10.0.0.3", "zone-b", true, false}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "web", []Endpoint{{"10.0.0.3", 15101, "zone-b"}, {"10.0.1.9", 15101, "zone-b"}})

	// Delete: slices go away; the Service stays with no endpoint.
	cs.Delete(ctx, "web-1", metav1.DeleteOptions{})
	cs.Delete(ctx, "web-2", metav1.DeleteOptions{})
	rec.waitFor(t, "web", nil)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestBuildPicksNamedPort(t *testing.T) {
	svc := service("api", "http", "metrics")
	s1 := slice("api-1", "api", 8080, "http", ep{"10.0.0.5", "z", true, false})
	s2 := slice("api-2", "api", 9090, "metrics", ep{"10.0.0.5", "z", true, false})
	other := slice("x-1", "unknown", 1, "http", ep{"10.9.9.9", "z", true, false})
	snap := Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{s1, s2, other})
	if want := (Snapshot{"api": {{"10.0.0.5", 8080, "z"}}}); !reflect.DeepEqual(snap, want) {
		t.Fatalf("Build = %v, want %v", snap, want)
	}
}

func TestMergeReplacesOnlyDiscovered(t *testing.T) {
	m := &model.Mesh{Services: []model.Service{
		{Name: "web", DNS: &model.DNS{Host: "web.mesh.svc", Port: 80}},
		{Name: "static", Endpoints: []model.Endpoint{{Address: "10.1.1.1", Port: 81}}},
	}}
	got := Merge(m, Snapshot{"web": {{"10.0.0.2", 15101, "zone-a"}}})
	if got.Services[0].DNS != nil || len(got.Services[0].Endpoints) != 1 || got.Services[0].Endpoints[0].Address != "10.0.0.2" {
		t.Fatalf("web not replaced: %+v", got.Services[0])
	}
	if !reflect.DeepEqual(got.Services[1], m.Services[1]) {
		t.Fatalf("static service changed: %+v", got.Services[1])
	}
	if m.Services[0].DNS == nil {
		t.Fatal("Merge modified its input")
	}
}
