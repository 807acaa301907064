package deploycheck

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sidemesh/sidemesh/controlplane/model"
	"github.com/sidemesh/sidemesh/controlplane/translate"
	"github.com/sidemesh/sidemesh/controlplane/xds"
)

// groupOf serves the model file through the controlplane's own ADS server
// and returns its node → group function, so the check below uses the very
// rule a deployed controlplane applies.
func groupOf(t *testing.T, modelFile string) func(*corev3.Node) string {
	t.Helper()
	m, err := model.Load(filepath.Join(root, modelFile))
	if err != nil {
		t.Fatalf("%s: %v", modelFile, err)
	}
	out, err := translate.Build(m, nil)
	if err != nil {
		t.Fatalf("%s: %v", modelFile, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := xds.New(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err := srv.Apply(ctx, out); err != nil {
		t.Fatalf("%s: %v", modelFile, err)
	}
	return srv.Group
}

// proxyNode is the xDS node a `proxy` command line presents; $(POD_NAME)
// stands for any pod name.
func proxyNode(t *testing.T, where string, args []string) *corev3.Node {
	id, _ := FlagValue(args, "node-id")
	cluster, _ := FlagValue(args, "cluster")
	role, ok := FlagValue(args, "role")
	if !ok {
		role = "sidecar" // bin/proxy's default
	}
	if id == "" {
		t.Errorf("%s: proxy without --node-id", where)
	}
	id = strings.ReplaceAll(id, "$(POD_NAME)", "pod-7f9c4-x2x9q")
	return &corev3.Node{Id: id, Cluster: cluster,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"role": structpb.NewStringValue(role)}}}
}

// Every proxy that docker-compose or the k8s manifests start gets its
// listeners: its node resolves to a model proxy entry, not to the
// proxyless group (which would leave it with no listeners at all).
func TestDeployedProxiesMatchModelEntries(t *testing.T) {
	t.Run("compose", func(t *testing.T) {
		group := groupOf(t, "controlplane/examples/mesh-compose.yaml")
		n := 0
		for name, svc := range loadCompose(t).Services {
			if len(svc.Command) == 0 || svc.Command[0] != "proxy" {
				continue
			}
			n++
			node := proxyNode(t, name, svc.Command)
			if g := group(node); !strings.HasPrefix(g, translate.ProxyGroup("")) {
				t.Errorf("compose service %s: node id=%q cluster=%q gets group %q, not a model proxy", name, node.Id, node.Cluster, g)
			}
		}
		if n < 3 {
			t.Errorf("compose starts %d proxies, want the two sidecars and the ingress", n)
		}
	})
	t.Run("k8s", func(t *testing.T) {
		r := render(t, "k8s/overlays/dev")
		group := groupOf(t, "k8s/base/mesh-k8s.yaml")
		n := 0
		for _, w := range r.workloads() {
			for _, c := range w.tmpl.Spec.Containers {
				args := append(append([]string{}, c.Command...), c.Args...)
				if len(args) == 0 || args[0] != "proxy" {
					continue
				}
				n++
				node := proxyNode(t, w.name, args)
				if g := group(node); !strings.HasPrefix(g, translate.ProxyGroup("")) {
					t.Errorf("%s/%s: node id=%q cluster=%q gets group %q, not a model proxy", w.name, c.Name, node.Id, node.Cluster, g)
				}
			}
		}
		if n < 3 {
			t.Errorf("the manifests start %d proxies, want the two sidecars and the ingress", n)
		}
	})
}
