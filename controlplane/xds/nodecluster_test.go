package xds

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/controlplane/translate"
)

const replicaModel = `
services:
  - name: web
    endpoints: [{address: 127.0.0.1, port: 15101}]
proxies:
  - id: web-sidecar
    role: sidecar
    service: web
    inbound: {listen: 127.0.0.1:15101, app: 127.0.0.1:18101}
    outbound: {listen: 127.0.0.1:15102}
  - id: ingress
    role: ingress
    listen: 127.0.0.1:18080
    routes:
      - name: public
        hosts: ["*"]
        http:
          - name: all
            match: {prefix: /}
            route: [{service: web}]
`

func node(id, cluster, role string) *corev3.Node {
	n := &corev3.Node{Id: id, Cluster: cluster}
	if role != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue(role)}}
	}
	return n
}

// Replicas of one proxy (pods of a Deployment, each with its own node id)
// share the model entry through their node cluster and role.
func TestReplicasMatchByNodeCluster(t *testing.T) {
	e := startServer(t)
	e.apply(replicaModel, nil)
	for _, c := range []struct {
		n    *corev3.Node
		want string
	}{
		{node("web-sidecar", "", ""), translate.ProxyGroup("web-sidecar")},                      // by id, as before
		{node("web-7f9c-abcde", "web", "sidecar"), translate.ProxyGroup("web-sidecar")},         // cluster = the sidecar's service
		{node("web-7f9c-fghij", "web-sidecar", "sidecar"), translate.ProxyGroup("web-sidecar")}, // cluster = the proxy id
		{node("ingress-5d8-xyz", "ingress", "ingress"), translate.ProxyGroup("ingress")},
		{node("grpc-client", "web", ""), translate.GroupMesh}, // proxyless: no role, stays in the mesh group
		{node("odd", "web", "ingress"), translate.GroupMesh},  // role must match the entry
		{node("hds-0", "web", "hds"), translate.GroupHDS},
	} {
		if got := e.srv.Group(c.n); got != c.want {
			t.Errorf("node id=%q cluster=%q role=%v: group %q, want %q", c.n.Id, c.n.Cluster, c.n.Metadata.GetFields()["role"].GetStringValue(), got, c.want)
		}
	}

	// And a replica really gets the sidecar's listeners over ADS.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("web-7f9c-abcde", "web", "sidecar"),
		TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range resp.GetResources() {
		var l listenerv3.Listener
		if err := r.GetResource().UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		got[l.GetName()] = l.GetApiListener() == nil
	}
	if !got[translate.InboundListener] || !got[translate.OutboundListener] {
		t.Fatalf("replica got listeners %v, want the sidecar's inbound and outbound socket listeners", got)
	}
}
