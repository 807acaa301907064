package deploycheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/controlplane/bootstrap"
	"github.com/sidemesh/sidemesh/internal/testbin"
)

// The Envoy bootstrap mounted by the compose `envoy` profile decodes strictly
// into the Envoy Bootstrap proto, validates, and is what the generator
// prints today (its header names the command).
func TestEnvoyBootstrap(t *testing.T) {
	path := filepath.Join(root, "deploy/envoy/ingress-bootstrap.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Parse(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b.GetNode().GetId() != "envoy-ingress" || b.GetHdsConfig() == nil || b.GetDynamicResources().GetAdsConfig() == nil {
		t.Fatalf("%s: want node envoy-ingress with ADS and hds_config, got %v", path, b.GetNode())
	}
	var cmdline string
	var body []string
	for _, line := range strings.Split(string(data), "\n") {
		if c, ok := strings.CutPrefix(line, "#   bin/controlplane "); ok {
			cmdline = c
		}
		if !strings.HasPrefix(line, "#") {
			body = append(body, line)
		}
	}
	if cmdline == "" {
		t.Fatal("header does not name the generating command")
	}
	out, err := exec.Command(testbin.Build(t, "./controlplane/cmd/controlplane"), strings.Fields(cmdline)...).Output()
	if err != nil {
		t.Fatalf("controlplane %s: %v", cmdline, err)
	}
	if strings.TrimSpace(string(out)) != strings.TrimSpace(strings.Join(body, "\n")) {
		t.Fatalf("%s is stale: regenerate it with bin/controlplane %s", path, cmdline)
	}
}
