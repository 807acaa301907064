package rules

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"
)

// File is one rule file's content.
type File struct {
	Name string
	Data []byte
}

// maxNodes bounds alias expansion so a hostile file cannot blow up memory.
const maxNodes = 1 << 20

// Options change how a set of rule files becomes one Config.
type Options struct {
	// MergeDomains combines the files that declare the same domain into one
	// domain, as envoyproxy/ratelimit does with MERGE_DOMAIN_CONFIG=true:
	// each file's top-level descriptors are added to the domain in file
	// order (so a wildcard of an earlier file is tried before one of a later
	// file), nested levels are never merged (the same top-level descriptor
	// in two files is a load error naming both), and replaces resolve
	// across all of the domain's files. Off, two files with one domain are
	// a load error.
	MergeDomains bool
}

// Parse builds a Config from rule files, each domain in one file. Every
// problem is reported as "file:line: field: reason"; all problems found are
// joined.
func Parse(files []File) (*Config, error) { return ParseOptions(files, Options{}) }

// domainRules is one domain while it is parsed: with MergeDomains, every
// file declaring it adds to the same tree.
type domainRules struct {
	name string
	root *node
	// names of the domain's rate_limits and the replaces naming them, to
	// find dangling replaces once all of the domain's files are read.
	names    map[string]bool
	replaces []replaceRef
	// file that first declared the domain.
	file string
}

func newDomainRules(name, file string) *domainRules {
	return &domainRules{name: name, root: newNode(), names: map[string]bool{}, file: file}
}

// ParseOptions builds a Config from rule files, in the given order (Load
// and ReadPath sort a directory's files by name).
func ParseOptions(files []File, o Options) (*Config, error) {
	c := &Config{domains: map[string]*node{}}
	var errs []error
	domains := map[string]*domainRules{}
	var all []*domainRules
	for _, f := range files {
		p := &parser{file: f.Name}
		var dupOf string
		p.parseFile(f.Data, func(domain string) *domainRules {
			d := domains[domain]
			switch {
			case domain == "":
				d = newDomainRules(domain, f.Name)
			case d == nil:
				d = newDomainRules(domain, f.Name)
				domains[domain] = d
			case !o.MergeDomains:
				// Parsed on its own for its errors, then refused.
				dupOf = d.file
				d = newDomainRules(domain, f.Name)
			}
			all = append(all, d)
			return d
		})
		if dupOf != "" {
			p.errs = append(p.errs, fmt.Errorf("%s: domain: duplicate domain %q (also in %s); --merge-domain-config combines the files of one domain", f.Name, p.domain.name, dupOf))
		}
		if len(p.errs) > 0 {
			errs = append(errs, p.errs...)
			continue
		}
		c.Files = append(c.Files, f.Name)
	}
	seen := map[*domainRules]bool{}
	for _, d := range all {
		if seen[d] {
			continue
		}
		seen[d] = true
		n := 0
		for _, r := range d.replaces {
			if !d.names[r.name] && n < 20 {
				n++
				errs = append(errs, fmt.Errorf("%s:%d: rate_limit.replaces.name: %q names no rate_limit in domain %q", r.file, r.line, r.name, d.name))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for name, d := range domains {
		c.domains[name] = d.root
	}
	return c, nil
}

type parser struct {
	file   string
	errs   []error
	nodes  int
	domain *domainRules
}

type replaceRef struct {
	name string
	file string
	line int
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	if len(p.errs) >= 20 {
		return
	}
	loc := p.file
	if n != nil && n.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.file, n.Line)
	}
	p.errs = append(p.errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
}

// resolve follows aliases and counts visited nodes.
func (p *parser) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	p.nodes++
	return n
}

// mapping walks a mapping node, rejecting duplicate and unknown keys.
func (p *parser) mapping(n *yaml.Node, field string, allowed map[string]bool, fn func(key string, k, v *yaml.Node)) {
	n = p.resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		p.errorf(n, field, "must be a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := p.resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, field, "keys must be strings")
			continue
		}
		if k.Value == "<<" {
			p.errorf(k, field, "merge keys (<<) are not supported")
			continue
		}
		if seen[k.Value] {
			p.errorf(k, field+"."+k.Value, "duplicate key")
			continue
		}
		seen[k.Value] = true
		if !allowed[k.Value] {
			hint := ""
			if allowed["unit"] && descriptorOnly[k.Value] {
				hint = "; " + k.Value + " belongs on the descriptor, next to rate_limit"
			}
			p.errorf(k, field+"."+k.Value, "unknown field (allowed: %s)%s", keysOf(allowed), hint)
			continue
		}
		fn(k.Value, k, v)
	}
}

func keysOf(m map[string]bool) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func (p *parser) str(n *yaml.Node, field string) string {
	n = p.resolve(n)
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool") {
		p.errorf(n, field, "must be a string")
		return ""
	}
	return n.Value
}

func (p *parser) boolean(n *yaml.Node, field string) bool {
	n = p.resolve(n)
	var b bool
	if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
		p.errorf(n, field, "must be true or false, got %q", n.Value)
	}
	return b
}

func (p *parser) uint32(n *yaml.Node, field string) uint32 {
	n = p.resolve(n)
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil || v < 0 || v > math.MaxUint32 {
		p.errorf(n, field, "must be an integer between 0 and %d, got %q", uint32(math.MaxUint32), n.Value)
		return 0
	}
	return uint32(v)
}

var rootKeys = map[string]bool{"domain": true, "descriptors": true}

// parseFile reads one file; domainFor gives the tree its descriptors go
// into once the file's domain is known.
func (p *parser) parseFile(data []byte, domainFor func(domain string) *domainRules) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p.errs = append(p.errs, fmt.Errorf("%s: %w", p.file, err))
		return
	}
	if len(doc.Content) == 0 {
		p.errorf(nil, "domain", "file is empty")
		return
	}
	var domain string
	var domainSeen bool
	var descs *yaml.Node
	p.mapping(doc.Content[0], "root", rootKeys, func(key string, k, v *yaml.Node) {
		switch key {
		case "domain":
			domain, domainSeen = p.str(v, "domain"), true
			if domain == "" {
				p.errorf(v, "domain", "must not be empty")
			}
		case "descriptors":
			descs = v
		}
	})
	if !domainSeen && len(p.errs) == 0 {
		p.errorf(doc.Content[0], "domain", "missing (every rule file needs a domain)")
	}
	p.domain = domainFor(domain)
	if descs != nil {
		p.descriptors(p.domain.root, descs, "descriptors", "", nil)
	}
}

var descriptorKeys = map[string]bool{
	"key": true, "value": true, "rate_limit": true, "descriptors": true,
	"shadow_mode": true, "detailed_metric": true, "quota_mode": true,
	"value_to_metric": true, "share_threshold": true, "metadata": true,
}

var rateLimitKeys = map[string]bool{
	"unit": true, "requests_per_unit": true, "unlimited": true, "name": true, "replaces": true,
	// sidemesh extensions
	"algorithm": true, "burst": true,
}

// descriptorOnly are descriptor fields people put inside rate_limit by
// mistake; the error says where they belong.
var descriptorOnly = map[string]bool{
	"shadow_mode": true, "quota_mode": true, "detailed_metric": true,
	"value_to_metric": true, "share_threshold": true, "metadata": true,
}

func (p *parser) descriptors(parent *node, n *yaml.Node, field, path string, levels []Level) {
	n = p.resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "must be a list of descriptors")
		return
	}
	if len(levels) > 64 {
		p.errorf(n, field, "nested more than 64 levels")
		return
	}
	for _, item := range n.Content {
		if p.nodes > maxNodes {
			p.errorf(item, field, "file too large (more than %d YAML nodes after aliases)", maxNodes)
			return
		}
		p.descriptor(parent, item, field, path, levels)
	}
}

// descFlags are a descriptor's boolean options.
type descFlags struct {
	shadow, detailed, quota, valueToMetric, share bool
}

func (p *parser) descriptor(parent *node, item *yaml.Node, field, path string, levels []Level) {
	var key, value string
	var keySeen bool
	var fl descFlags
	var rl, children, shareNode *yaml.Node
	var md *structpb.Struct
	item = p.resolve(item)
	p.mapping(item, field, descriptorKeys, func(name string, k, v *yaml.Node) {
		switch name {
		case "key":
			key, keySeen = p.str(v, field+".key"), true
		case "value":
			value = p.str(v, field+".value")
		case "rate_limit":
			rl = v
		case "descriptors":
			children = v
		case "shadow_mode":
			fl.shadow = p.boolean(v, field+".shadow_mode")
		case "detailed_metric":
			fl.detailed = p.boolean(v, field+".detailed_metric")
		case "quota_mode":
			fl.quota = p.boolean(v, field+".quota_mode")
		case "value_to_metric":
			fl.valueToMetric = p.boolean(v, field+".value_to_metric")
		case "share_threshold":
			shareNode = v
			fl.share = p.boolean(v, field+".share_threshold")
		case "metadata":
			md = p.metadata(v, field+".metadata")
		}
	})
	if item == nil || item.Kind != yaml.MappingNode {
		return
	}
	if !keySeen || key == "" {
		p.errorf(item, field+".key", "descriptor has an empty or missing key")
		return
	}
	wild := IsWildcard(value)
	if fl.share && !wild {
		p.errorf(shareNode, field+".share_threshold", "needs a wildcard value (containing '*') to share one counter among the values it matches; key %q has value %q", key, value)
	}
	ek := entryKey{key, value}
	if prev := parent.children[ek]; prev != nil {
		name, f := fmt.Sprintf("%q", key), field+".key"
		if value != "" {
			name, f = fmt.Sprintf("%q=%q", key, value), field+".value"
		}
		if prev.file != p.file {
			// Only at the top level: each file builds its own nested levels.
			p.errorf(item, f, "duplicate descriptor composite key %s in domain %q: also defined at %s:%d (merged files must not define the same top-level descriptor; nested levels are not merged)", name, p.domain.name, prev.file, prev.line)
			return
		}
		if value == "" {
			p.errorf(item, field+".key", "duplicate descriptor %q at this level", key)
		} else {
			p.errorf(item, field+".value", "duplicate descriptor %q=%q at this level", key, value)
		}
		return
	}
	self := key
	if value != "" {
		self += "_" + value
	}
	if path != "" {
		self = path + "." + self
	}
	lv := Level{Kind: LevelExact, Key: key, Value: value, ValueToMetric: fl.valueToMetric, Share: fl.share && wild}
	switch {
	case value == "":
		lv.Kind = LevelBare
	case wild:
		lv.Kind = LevelWildcard
	}
	// Every limit keeps its own copy of the levels above it.
	mine := append(levels[:len(levels):len(levels)], lv)
	child := newNode()
	child.file, child.line = p.file, item.Line
	if rl != nil {
		child.limit = p.rateLimit(rl, field+".rate_limit", self, fl, md, mine)
	}
	if children != nil {
		p.descriptors(child, children, field+".descriptors", self, mine)
	}
	parent.children[ek] = child
	if wild {
		parent.wildcards = append(parent.wildcards, wildcard{key: key, parts: strings.Split(value, "*"), n: child})
	}
}

func (p *parser) rateLimit(n *yaml.Node, field, path string, fl descFlags, md *structpb.Struct, levels []Level) *RateLimit {
	rl := &RateLimit{Path: path, ShadowMode: fl.shadow, QuotaMode: fl.quota, DetailedMetric: fl.detailed, Metadata: md, Levels: levels}
	for _, l := range levels {
		rl.SharedKey = rl.SharedKey || l.Share
		rl.ValueLabel = rl.ValueLabel || (l.ValueToMetric && l.Kind != LevelExact && !l.Share)
	}
	n = p.resolve(n)
	rl.Source = fmt.Sprintf("%s:%d", p.file, n.Line)
	firstReplace := len(p.domain.replaces)
	var unitNode, burstNode, algNode *yaml.Node
	var unit string
	p.mapping(n, field, rateLimitKeys, func(name string, k, v *yaml.Node) {
		switch name {
		case "unit":
			unitNode, unit = v, p.str(v, field+".unit")
		case "requests_per_unit":
			rl.RequestsPerUnit = p.uint32(v, field+".requests_per_unit")
		case "unlimited":
			rl.Unlimited = p.boolean(v, field+".unlimited")
		case "name":
			rl.Name = p.str(v, field+".name")
		case "replaces":
			p.replacesList(rl, v, field+".replaces")
		case "algorithm":
			algNode = v
			a, ok := algorithmNames[strings.ToLower(p.str(v, field+".algorithm"))]
			if !ok {
				p.errorf(v, field+".algorithm", "unknown algorithm %q (fixed_window, sliding_window or token_bucket)", v.Value)
			}
			rl.Algorithm = a
		case "burst":
			burstNode = v
			rl.Burst = p.uint32(v, field+".burst")
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	u, ok := rlsv3.RateLimitResponse_RateLimit_Unit_value[strings.ToUpper(unit)]
	valid := ok && u != int32(rlsv3.RateLimitResponse_RateLimit_UNKNOWN)
	switch {
	case rl.Unlimited && unitNode != nil && valid:
		p.errorf(unitNode, field+".unit", "must not be set when unlimited is true")
	case rl.Unlimited && algNode != nil:
		p.errorf(algNode, field+".algorithm", "must not be set when unlimited is true")
	case !rl.Unlimited && unitNode == nil:
		p.errorf(n, field+".unit", "missing (second, minute, hour, day, week, month or year)")
	case !rl.Unlimited && !valid:
		p.errorf(unitNode, field+".unit", "invalid unit %q (second, minute, hour, day, week, month or year)", unit)
	}
	if burstNode != nil && rl.Algorithm != TokenBucket {
		p.errorf(burstNode, field+".burst", "only valid with algorithm: token_bucket")
	}
	if rl.Name != "" {
		p.domain.names[rl.Name] = true
	}
	for _, r := range p.domain.replaces[firstReplace:] {
		if r.name == rl.Name {
			p.errorf(&yaml.Node{Line: r.line}, field+".replaces", "a limit must not replace itself (%q)", r.name)
		}
	}
	rl.Unit = rlsv3.RateLimitResponse_RateLimit_Unit(u)
	if !valid {
		rl.Unit = rlsv3.RateLimitResponse_RateLimit_UNKNOWN
	}
	rl.Proto = &rlsv3.RateLimitResponse_RateLimit{Name: rl.Name, RequestsPerUnit: rl.RequestsPerUnit, Unit: rl.Unit}
	return rl
}

func (p *parser) replacesList(rl *RateLimit, n *yaml.Node, field string) {
	n = p.resolve(n)
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "must be a list of {name: ...}")
		return
	}
	for _, item := range n.Content {
		var name string
		item = p.resolve(item)
		p.mapping(item, field, map[string]bool{"name": true}, func(_ string, _, v *yaml.Node) {
			name = p.str(v, field+".name")
		})
		if item.Kind != yaml.MappingNode {
			continue
		}
		if name == "" {
			p.errorf(item, field+".name", "must not be empty")
			continue
		}
		rl.Replaces = append(rl.Replaces, name)
		p.domain.replaces = append(p.domain.replaces, replaceRef{name: name, file: p.file, line: item.Line})
	}
}
