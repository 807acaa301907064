package translate

import (
	"encoding/json"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
)

// Dump renders a group's resources as JSON (the Envoy proto JSON mapping),
// keyed by type: listeners, routes, clusters, endpoints.
func (o *Output) Dump(group string) ([]byte, error) {
	g, ok := o.Groups[group]
	if !ok {
		return nil, fmt.Errorf("no group %q", group)
	}
	out := map[string][]json.RawMessage{}
	add := func(key string, rs []types.Resource) error {
		out[key] = []json.RawMessage{}
		for _, r := range rs {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(r)
			if err != nil {
				return err
			}
			out[key] = append(out[key], b)
		}
		return nil
	}
	for _, part := range []struct {
		key string
		rs  []types.Resource
	}{{"listeners", g.Listeners}, {"routes", g.Routes}, {"clusters", g.Clusters}, {"endpoints", o.GroupEndpoints(group)}} {
		if err := add(part.key, part.rs); err != nil {
			return nil, fmt.Errorf("dump %s: %w", part.key, err)
		}
	}
	return json.MarshalIndent(out, "", "  ")
}
