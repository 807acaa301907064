// Package k8ssource discovers service endpoints on Kubernetes: it watches
// Services and EndpointSlices with client-go informers and hands the
// controlplane the ready endpoints of every Service, with their zones.
//
// Merge rule (see Merge): the mesh model stays the source of routes and
// policies; a model service whose name is also a Kubernetes Service in the
// watched namespace takes its endpoints from that Service's EndpointSlices
// (ready, non-terminating addresses only), replacing the model's static
// endpoints or DNS name.
package k8ssource

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// Endpoint is one ready address of a Service.
type Endpoint struct {
	Address string
	Port    uint32
	Zone    string
}

// Snapshot maps a Kubernetes Service name to its ready endpoints, sorted.
type Snapshot map[string][]Endpoint

// Source watches one namespace.
type Source struct {
	client    kubernetes.Interface
	namespace string
	log       *slog.Logger
	onChange  func(Snapshot)
	debounce  time.Duration

	mu      sync.Mutex
	pending bool
}

// New returns a source that calls onChange with a full snapshot after every
// change (coalesced over debounce).
func New(client kubernetes.Interface, namespace string, log *slog.Logger, debounce time.Duration, onChange func(Snapshot)) *Source {
	return &Source{client: client, namespace: namespace, log: log, onChange: onChange, debounce: debounce}
}

// Run starts the informers, emits the first snapshot once they have synced,
// then one per change, until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(s.client, 10*time.Minute, informers.WithNamespace(s.namespace))
	svcInf := f.Core().V1().Services()
	sliceInf := f.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify(kick) },
		UpdateFunc: func(any, any) { notify(kick) },
		DeleteFunc: func(any) { notify(kick) },
	}
	if _, err := svcInf.Informer().AddEventHandler(h); err != nil {
		return fmt.Errorf("kubernetes: watching services: %w", err)
	}
	if _, err := sliceInf.Informer().AddEventHandler(h); err != nil {
		return fmt.Errorf("kubernetes: watching endpointslices: %w", err)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kubernetes: %v informer did not sync: %w", typ, ctx.Err())
		}
	}
	s.log.Info("kubernetes discovery synced", "namespace", s.namespace)
	emit := func() {
		svcs, err := svcInf.Lister().List(labels.Everything())
		if err != nil {
			s.log.Warn("listing services", "err", err)
			return
		}
		slices, err := sliceInf.Lister().List(labels.Everything())
		if err != nil {
			s.log.Warn("listing endpointslices", "err", err)
			return
		}
		s.onChange(Build(svcs, slices))
	}
	emit()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			// Coalesce bursts (a rollout touches many slices).
			t := time.NewTimer(s.debounce)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			select {
			case <-kick:
			default:
			}
			emit()
		}
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Build computes the snapshot: for every Service, the ready, non-terminating
// addresses of its EndpointSlices on the target port of the Service's first
// port (ports sorted by name, so the choice is stable; name the mesh port
// first, e.g. "http").
func Build(svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice) Snapshot {
	portName := map[string]string{}
	for _, s := range svcs {
		if len(s.Spec.Ports) == 0 {
			continue
		}
		ports := append([]corev1.ServicePort(nil), s.Spec.Ports...)
		sort.Slice(ports, func(i, j int) bool { return ports[i].Name < ports[j].Name })
		portName[s.Name] = ports[0].Name
	}
	snap := Snapshot{}
	for svc := range portName {
		snap[svc] = nil
	}
	for _, sl := range slices {
		svc := sl.Labels[discoveryv1.LabelServiceName]
		want, ok := portName[svc]
		if !ok {
			continue
		}
		var port int32
		for _, p := range sl.Ports {
			if p.Port != nil && (p.Name == nil && want == "" || p.Name != nil && *p.Name == want) {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
				continue
			}
			zone := ""
			if ep.Zone != nil {
				zone = *ep.Zone
			}
			for _, a := range ep.Addresses {
				snap[svc] = append(snap[svc], Endpoint{Address: a, Port: uint32(port), Zone: zone})
			}
		}
	}
	for svc, eps := range snap {
		sort.Slice(eps, func(i, j int) bool {
			if eps[i].Address != eps[j].Address {
				return eps[i].Address < eps[j].Address
			}
			return eps[i].Port < eps[j].Port
		})
		snap[svc] = eps
	}
	return snap
}

// Merge returns a copy of m in which every service named like a discovered
// Kubernetes Service gets the discovered endpoints (its static endpoints and
// DNS name are dropped). Services Kubernetes does not know keep the model's.
// A discovered Service with no ready endpoint leaves the mesh service empty:
// traffic fails fast rather than going to a stale address.
func Merge(m *model.Mesh, snap Snapshot) *model.Mesh {
	out := *m
	out.Services = make([]model.Service, len(m.Services))
	for i, s := range m.Services {
		eps, ok := snap[s.Name]
		if ok {
			s.DNS = nil
			s.Endpoints = make([]model.Endpoint, 0, len(eps))
			for _, e := range eps {
				s.Endpoints = append(s.Endpoints, model.Endpoint{Address: e.Address, Port: e.Port, Zone: e.Zone, Weight: 1})
			}
		}
		out.Services[i] = s
	}
	return &out
}
