package devmesh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestOffsetModelShiftsEveryPort(t *testing.T) {
	root, _ := filepath.Abs("../..")
	src := filepath.Join(root, "controlplane/examples/mesh.yaml")
	dst := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := OffsetModel(src, dst, 10000); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	// Every port the example model binds or dials, shifted.
	for _, want := range []string{"port: 25101", "port: 25201", "port: 28081", "port: 28181",
		"127.0.0.1:25101", "127.0.0.1:28101", "127.0.0.1:25102", "127.0.0.1:28201", "127.0.0.1:28080"} {
		if !strings.Contains(out, want) {
			t.Errorf("offset model lacks %q", want)
		}
	}
	for _, old := range []string{"port: 15101", "127.0.0.1:18080", "127.0.0.1:18101"} {
		if strings.Contains(out, old) {
			t.Errorf("offset model still has %q", old)
		}
	}
	// Non-port numbers stay as they are.
	if !strings.Contains(out, "max_connections: 1024") {
		t.Error("a non-port number was changed")
	}
	var any map[string]any
	if err := yaml.Unmarshal(b, &any); err != nil {
		t.Fatalf("offset model is not YAML: %v", err)
	}
}

func TestOffsetModelNamesBadPort(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "m.yaml")
	os.WriteFile(src, []byte("proxies:\n  - listen: nowhere\n"), 0o644)
	err := OffsetModel(src, filepath.Join(dir, "out.yaml"), 1)
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("want an error naming line 2 and the field, got %v", err)
	}
}
