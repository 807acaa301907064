package devmesh

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"gopkg.in/yaml.v3"
)

// OffsetModel copies the mesh model at src to dst with every port shifted
// by offset: integer `port` fields and the port of host:port `listen` and
// `app` fields. A mesh started with --port-offset must not bind the model's
// own ports, or it would collide with the mesh it runs beside. Comments and
// layout are kept, so errors the controlplane reports still read naturally.
func OffsetModel(src, dst string, offset int) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read model: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("model %s: %w", src, err)
	}
	if err := shiftPorts(&doc, offset); err != nil {
		return fmt.Errorf("model %s: %w", src, err)
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return fmt.Errorf("model %s: %w", src, err)
	}
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		return fmt.Errorf("write offset model: %w", err)
	}
	return nil
}

func shiftPorts(n *yaml.Node, offset int) error {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				continue
			}
			switch k.Value {
			case "port":
				p, err := strconv.Atoi(v.Value)
				if err != nil {
					return fmt.Errorf("line %d: port %q is not a number", v.Line, v.Value)
				}
				v.Value = strconv.Itoa(p + offset)
			case "listen", "app":
				host, port, err := net.SplitHostPort(v.Value)
				if err != nil {
					return fmt.Errorf("line %d: %s %q: %w", v.Line, k.Value, v.Value, err)
				}
				p, err := strconv.Atoi(port)
				if err != nil {
					return fmt.Errorf("line %d: %s %q: port is not a number", v.Line, k.Value, v.Value)
				}
				v.Value = net.JoinHostPort(host, strconv.Itoa(p+offset))
			}
		}
	}
	for _, c := range n.Content {
		if err := shiftPorts(c, offset); err != nil {
			return err
		}
	}
	return nil
}
