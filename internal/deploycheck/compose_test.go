package deploycheck

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

const root = "../.."

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	ctx := context.Background()
	path, _ := filepath.Abs(filepath.Join(root, "docker-compose.yaml"))
	details, err := loader.LoadConfigFiles(ctx, []string{path}, filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	details.Environment = types.Mapping{}
	// Schema validation is on: unknown keys or wrong types fail here.
	p, err := loader.LoadWithContext(ctx, *details, func(o *loader.Options) {
		o.SetProjectName("sidemesh", true)
		o.Profiles = []string{"*"}
	})
	if err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	return p
}

func TestComposeParsesAndAgreesWithBinaries(t *testing.T) {
	p := loadCompose(t)
	for _, want := range []string{"redis", "controlplane", "hds-1", "hds-2", "hds-3", "rls-1", "rls-2",
		"web-app", "api-app", "web-sidecar", "api-sidecar", "ingress", "envoy"} {
		if _, ok := p.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	helps := helpCache{}
	for name, svc := range p.Services {
		// Only the ingresses publish host ports.
		if len(svc.Ports) > 0 && name != "ingress" && name != "envoy" {
			t.Errorf("%s publishes host ports %v; only the ingresses may", name, svc.Ports)
		}
		if svc.HealthCheck == nil || len(svc.HealthCheck.Test) == 0 {
			if name != "envoy" {
				t.Errorf("%s has no healthcheck", name)
			}
		}
		if svc.Restart == "" {
			t.Errorf("%s has no restart policy", name)
		}
		for dep, d := range svc.DependsOn {
			if d.Condition == types.ServiceConditionHealthy {
				if ds, ok := p.Services[dep]; !ok || ds.HealthCheck == nil {
					t.Errorf("%s waits for %s to be healthy, but it has no healthcheck", name, dep)
				}
			}
		}
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s which does not exist", name, v.Source)
				}
			}
		}
		if !strings.HasPrefix(svc.Image, "sidemesh:") {
			continue
		}
		if len(svc.Command) == 0 {
			t.Errorf("%s: no command", name)
			continue
		}
		if _, ok := Binaries[svc.Command[0]]; !ok {
			t.Errorf("%s runs %q, not a sidemesh binary", name, svc.Command[0])
			continue
		}
		args := helps.checkCommand(t, name, svc.Command)
		// The healthcheck probes the admin port the command configures.
		if adm, ok := FlagValue(args, "admin-addr"); ok && svc.HealthCheck != nil {
			_, port, _ := strings.Cut(adm, ":")
			probe := strings.Join(svc.HealthCheck.Test, " ")
			if !strings.Contains(probe, ":"+port+"/") {
				t.Errorf("%s: healthcheck %q does not probe admin port %s", name, probe, port)
			}
		}
		// Every host:port a mesh component dials names a compose service.
		for _, f := range []string{"xds-addr", "hds-addr", "join", "redis-url"} {
			v, ok := FlagValue(args, f)
			if !ok {
				continue
			}
			for _, target := range strings.Split(v, ",") {
				if u, err := url.Parse(target); err == nil && u.Scheme == "redis" {
					target = u.Host
				}
				host, _, _ := strings.Cut(target, ":")
				if host == "0.0.0.0" || host == "127.0.0.1" {
					continue
				}
				if _, ok := p.Services[host]; !ok {
					t.Errorf("%s --%s names %q, which is not a compose service", name, f, host)
				}
			}
		}
	}
}
