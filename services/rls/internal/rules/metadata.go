package rules

import (
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"
)

// metadata converts a descriptor's metadata block (any YAML mapping) into
// the google.protobuf.Struct the service returns in dynamic_metadata:
// mappings become structs, sequences lists, booleans bools, integers and
// floats numbers, null null, anything else (strings, timestamps) strings.
// Keys are taken as written. A null or empty block means no metadata.
func (p *parser) metadata(n *yaml.Node, field string) *structpb.Struct {
	r := p.resolve(n)
	if r.Kind == yaml.ScalarNode && r.Tag == "!!null" {
		return nil
	}
	if r.Kind != yaml.MappingNode {
		p.errorf(r, field, "must be a mapping (any keys and values)")
		return nil
	}
	v := p.metaValue(r, field, 0)
	if v == nil || len(v.GetStructValue().GetFields()) == 0 {
		return nil
	}
	return v.GetStructValue()
}

func (p *parser) metaValue(n *yaml.Node, field string, depth int) *structpb.Value {
	n = p.resolve(n)
	if depth > 64 {
		p.errorf(n, field, "nested more than 64 levels")
		return nil
	}
	if p.nodes > maxNodes {
		p.errorf(n, field, "file too large (more than %d YAML nodes after aliases)", maxNodes)
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(n.Content)/2)}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := p.resolve(n.Content[i])
			if k.Kind != yaml.ScalarNode {
				p.errorf(k, field, "keys must be scalars")
				continue
			}
			if k.Tag == "!!merge" || k.Value == "<<" {
				p.errorf(k, field, "merge keys (<<) are not supported")
				continue
			}
			if _, dup := s.Fields[k.Value]; dup {
				p.errorf(k, field+"."+k.Value, "duplicate key")
				continue
			}
			if !utf8.ValidString(k.Value) {
				p.errorf(k, field, "key %q is not valid UTF-8", k.Value)
				continue
			}
			if v := p.metaValue(n.Content[i+1], field+"."+k.Value, depth+1); v != nil {
				s.Fields[k.Value] = v
			}
		}
		return structpb.NewStructValue(s)
	case yaml.SequenceNode:
		l := &structpb.ListValue{Values: make([]*structpb.Value, 0, len(n.Content))}
		for i, c := range n.Content {
			if v := p.metaValue(c, field+"["+strconv.Itoa(i)+"]", depth+1); v != nil {
				l.Values = append(l.Values, v)
			}
		}
		return structpb.NewListValue(l)
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return structpb.NewNullValue()
		case "!!bool":
			var b bool
			if n.Decode(&b) == nil {
				return structpb.NewBoolValue(b)
			}
		case "!!int", "!!float":
			var f float64
			if n.Decode(&f) == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
				return structpb.NewNumberValue(f)
			}
			if n.Tag == "!!float" {
				p.errorf(n, field, "%q is not a finite number (not representable in a protobuf Struct's JSON)", n.Value)
				return nil
			}
		}
		if !utf8.ValidString(n.Value) {
			p.errorf(n, field, "value is not valid UTF-8")
			return nil
		}
		return structpb.NewStringValue(n.Value)
	}
	p.errorf(n, field, "unsupported YAML node")
	return nil
}
