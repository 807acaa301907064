// Package devmesh starts the whole local mesh as processes on 127.0.0.1:
// redis, controlplane, HDS ring, RLS replicas, demo apps, sidecars and an
// ingress proxy. It backs `make run` (cmd/meshrun) and end-to-end tests.
package devmesh

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Proc is one process of the mesh.
type Proc struct {
	Name  string
	Kind  string   // binary name in the bin dir, or "demo-app" / "redis"
	Args  []string // flags
	Admin string   // admin host:port answering /ready, empty if none
	Ports string   // what to show in the table
	// Needs are flags that the binary's --help must list; a binary that
	// lacks them is an older skeleton and is skipped ("not built yet").
	Needs []string
}

// Options shape the plan.
type Options struct {
	Root      string // repository root, for example configs
	RedisPort int    // 0: no Redis; RLS use the memory backend
	Offset    int    // added to every port (tests run beside a live mesh)
	// Model is the controlplane's model file; empty means the example in
	// Root. With an Offset, pass a copy made by OffsetModel.
	Model string
}

func (o Options) addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port+o.Offset) }

// Plan returns the processes of the local mesh in start order.
func Plan(o Options) []Proc {
	var ps []Proc
	hdsGRPC := []int{18082, 18182, 18282}
	hdsAdmin := []int{19082, 19182, 19282}
	gossip := []int{17946, 17947, 17948}
	var hdsAddrs, joins string
	for i := range hdsGRPC {
		if i > 0 {
			hdsAddrs += ","
			joins += ","
		}
		hdsAddrs += o.addr(hdsGRPC[i])
		joins += o.addr(gossip[i])
	}
	xds := o.addr(18000)
	model := o.Model
	if model == "" {
		model = filepath.Join(o.Root, "controlplane/examples/mesh.yaml")
	}

	for _, app := range []struct {
		name, zone string
		port       int
	}{{"web", "zone-a", 18101}, {"api", "zone-b", 18201}} {
		ps = append(ps, Proc{
			Name: "app-" + app.name, Kind: "demo-app",
			Args:  []string{"--name", app.name, "--zone", app.zone, "--addr", o.addr(app.port)},
			Ports: "http " + o.addr(app.port),
		})
	}
	ps = append(ps, Proc{
		Name: "controlplane", Kind: "controlplane",
		Args: []string{"--xds-addr", xds, "--admin-addr", o.addr(19000),
			"--model", model, "--hds-addr", hdsAddrs},
		Admin: o.addr(19000), Ports: "xds " + xds + "  admin " + o.addr(19000),
		Needs: []string{"--xds-addr", "--model", "--hds-addr"},
	})
	backend := []string{"--backend", "memory"}
	if o.RedisPort != 0 {
		backend = []string{"--backend", "redis", "--redis-url", fmt.Sprintf("redis://127.0.0.1:%d/0", o.RedisPort)}
	}
	for i, p := range [][2]int{{18081, 19081}, {18181, 19181}} {
		ps = append(ps, Proc{
			Name: fmt.Sprintf("rls-%d", i+1), Kind: "rls",
			Args: append([]string{"--grpc-addr", o.addr(p[0]), "--admin-addr", o.addr(p[1]),
				"--rules", filepath.Join(o.Root, "services/rls/examples/rules")}, backend...),
			Admin: o.addr(p[1]), Ports: "grpc " + o.addr(p[0]) + "  admin " + o.addr(p[1]),
			Needs: []string{"--grpc-addr", "--rules", "--backend", "--redis-url"},
		})
	}
	for i := range hdsGRPC {
		ps = append(ps, Proc{
			Name: fmt.Sprintf("hds-%d", i+1), Kind: "hds",
			Args: []string{"--grpc-addr", o.addr(hdsGRPC[i]), "--admin-addr", o.addr(hdsAdmin[i]),
				"--node-name", fmt.Sprintf("hds-%d", i+1), "--gossip-addr", o.addr(gossip[i]),
				"--join", joins, "--xds-addr", xds},
			Admin: o.addr(hdsAdmin[i]),
			Ports: "grpc " + o.addr(hdsGRPC[i]) + "  admin " + o.addr(hdsAdmin[i]) + "  gossip " + o.addr(gossip[i]),
			Needs: []string{"--grpc-addr", "--node-name", "--gossip-addr", "--join", "--xds-addr"},
		})
	}
	for _, px := range []struct {
		node, cluster, zone, role string
		admin                     int
		ports                     string
		hds                       int
	}{
		{"web-sidecar", "web", "zone-a", "sidecar", 15100, "inbound " + o.addr(15101) + "  outbound " + o.addr(15102), 0},
		{"api-sidecar", "api", "zone-b", "sidecar", 15200, "inbound " + o.addr(15201) + "  outbound " + o.addr(15202), 1},
		{"ingress", "ingress", "zone-a", "ingress", 15000, "http " + o.addr(18080), 2},
	} {
		ps = append(ps, Proc{
			Name: px.node, Kind: "proxy",
			Args: []string{"--node-id", px.node, "--cluster", px.cluster, "--zone", px.zone, "--role", px.role,
				"--xds-addr", xds, "--hds-addr", rotate(hdsAddrs, px.hds), "--admin-addr", o.addr(px.admin)},
			Admin: o.addr(px.admin), Ports: px.ports + "  admin " + o.addr(px.admin),
			Needs: []string{"--node-id", "--role", "--xds-addr", "--hds-addr"},
		})
	}
	return ps
}

// rotate lists every HDS replica, starting with the proxy's own, so the
// proxy's HDS client fails over to the others when that one dies.
func rotate(list string, first int) string {
	parts := strings.Split(list, ",")
	return strings.Join(append(parts[first:], parts[:first]...), ",")
}
