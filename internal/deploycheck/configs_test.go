package deploycheck

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sidemesh/sidemesh/controlplane/model"
)

// The mesh models mounted by docker-compose and the k8s ConfigMap load with
// the controlplane's own strict loader, and name the proxies the deployments
// start.
func TestDeployedMeshModelsLoad(t *testing.T) {
	for _, f := range []string{"controlplane/examples/mesh.yaml", "controlplane/examples/mesh-compose.yaml", "k8s/base/mesh-k8s.yaml"} {
		m, err := model.Load(filepath.Join(root, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		ids := map[string]bool{}
		for _, p := range m.Proxies {
			ids[p.ID] = true
		}
		for _, want := range []string{"ingress", "web-sidecar", "api-sidecar"} {
			if !ids[want] {
				t.Errorf("%s: no proxy %q", f, want)
			}
		}
	}
}

// The k8s rules ConfigMap carries the same rules as the local mesh.
func TestK8sRulesMatchExample(t *testing.T) {
	a, err := os.ReadFile(filepath.Join(root, "services/rls/examples/rules/sidemesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "k8s/base/rules/sidemesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Fatal("k8s/base/rules/sidemesh.yaml differs from services/rls/examples/rules/sidemesh.yaml; copy it over")
	}
}
