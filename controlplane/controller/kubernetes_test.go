package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sidemesh/sidemesh/controlplane/internal/xdstest"
	"github.com/sidemesh/sidemesh/controlplane/k8ssource"
)

// Kubernetes discovery drives xDS end to end: client-go's fake clientset
// stands in for the API server (no cluster runs here); the informers, the
// controller, the ADS server and a real gRPC-Go xDS client are real.
func TestKubernetesEndpointsReachXDSClients(t *testing.T) {
	a, b, c := xdstest.Backend(t), xdstest.Backend(t), xdstest.Backend(t)
	r := start(t, svcModel(a))
	slice := func(addr string) *discoveryv1.EndpointSlice {
		h, p := xdstest.HostPort(addr)
		port, name, ready := int32(p), "grpc", true
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "svc-1", Namespace: "mesh", Labels: map[string]string{discoveryv1.LabelServiceName: "svc"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{h}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc", Namespace: "mesh"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 80}}}}
	client := fake.NewSimpleClientset()
	src := k8ssource.New(client, "mesh", quiet(), 0, func(s k8ssource.Snapshot) { r.ctl.SetDiscovered(r.ctx, s) })
	go func() { _ = src.Run(r.ctx) }()

	cc := xdstest.Client(t, r.addr, "k8s-client", "svc")
	if p, err := xdstest.Call(r.ctx, cc); err != nil || p != a {
		t.Fatalf("before discovery: %s %v, want the model's endpoint %s", p, err, a)
	}
	routesOnlyTo := func(want string) func() bool {
		return func() bool {
			for i := 0; i < 10; i++ {
				if p, err := xdstest.Call(r.ctx, cc); err != nil || p != want {
					return false
				}
			}
			return true
		}
	}
	// Add: the Service and its slice replace the model's endpoints.
	if _, err := client.CoreV1().Services("mesh").Create(r.ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("mesh").Create(r.ctx, slice(b), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	xdstest.Eventually(t, "traffic on the discovered endpoint", routesOnlyTo(b))
	// Update: the pod moves.
	if _, err := client.DiscoveryV1().EndpointSlices("mesh").Update(r.ctx, slice(c), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	xdstest.Eventually(t, "traffic on the moved endpoint", routesOnlyTo(c))
	// Delete: without the Service, the model's own endpoints serve again.
	if err := client.CoreV1().Services("mesh").Delete(r.ctx, "svc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	xdstest.Eventually(t, "traffic back on the model's endpoint", routesOnlyTo(a))
}
