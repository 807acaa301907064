package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem in the model, located as precisely as known.
type Error struct {
	File   string
	Line   int    // 0 when unknown
	Field  string // e.g. services[0].endpoints[1].port
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// maxFileSize bounds what one model file may hold; a mesh model is text a
// person writes, so anything bigger is a mistake.
const maxFileSize = 64 << 20

// Load reads a model from a YAML file, or from every *.yaml/*.yml file of a
// directory (merged in name order), and validates it.
func Load(path string) (*Mesh, error) {
	srcs, err := Read(path)
	if err != nil {
		return nil, err
	}
	return Parse(srcs...)
}

// Read returns the sources Load would parse: the file, or every
// *.yaml/*.yml file of the directory in name order.
func Read(path string) ([]Source, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	var files []string
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("model: %w", err)
		}
		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if e.Type().IsRegular() && (ext == ".yaml" || ext == ".yml") && !strings.HasPrefix(e.Name(), ".") {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		if len(files) == 0 {
			return nil, &Error{File: path, Reason: "directory holds no *.yaml or *.yml file"}
		}
	} else {
		files = []string{path}
	}
	srcs := make([]Source, 0, len(files))
	for _, f := range files {
		data, err := readLimited(f)
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, Source{Name: f, Data: data})
	}
	return srcs, nil
}

// Fingerprint is a content hash of sources (names and bytes): equal
// fingerprints mean Parse sees the same input.
func Fingerprint(srcs []Source) string {
	h := sha256.New()
	for _, s := range srcs {
		fmt.Fprintf(h, "%s\x00%d\x00", s.Name, len(s.Data))
		h.Write(s.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Reason: fmt.Sprintf("file larger than %d bytes", maxFileSize)}
	}
	return data, nil
}

// Source is one named YAML document set.
type Source struct {
	Name string
	Data []byte
}

// origin locates a merged list element in its file.
type origin struct {
	file  string
	index int // index within that file's list
}

// locator maps merged field paths back to file and line. Lines are only
// needed for errors, so a file's path -> line map is built on first use.
type locator struct {
	origins map[string][]origin       // top-level key -> merged index -> origin
	roots   map[string]*yaml.Node     // file -> its YAML tree
	lines   map[string]map[string]int // file -> path -> line, built lazily
}

// fileLines maps field paths to lines in one file.
func (l *locator) fileLines(file string) map[string]int {
	if lines, ok := l.lines[file]; ok {
		return lines
	}
	lines := map[string]int{}
	if root := l.roots[file]; root != nil && len(root.Content) > 0 {
		walk(root.Content[0], "", lines)
	}
	l.lines[file] = lines
	return lines
}

// Parse decodes and validates sources as one model.
func Parse(srcs ...Source) (*Mesh, error) { return parse(srcs, nil) }

// parse is Parse, with YAML trees already built for some sources (roots[i]
// for srcs[i], nil where the source is to be parsed here).
func parse(srcs []Source, roots []*yaml.Node) (*Mesh, error) {
	loc := &locator{origins: map[string][]origin{}, roots: map[string]*yaml.Node{}, lines: map[string]map[string]int{}}
	merged := &Mesh{}
	for i, src := range srcs {
		var root *yaml.Node
		if i < len(roots) {
			root = roots[i]
		}
		m, err := decode(src, root, loc)
		if err != nil {
			return nil, err
		}
		if m.RateLimitService != nil {
			if merged.RateLimitService != nil {
				return nil, &Error{File: src.Name, Line: loc.fileLines(src.Name)["rate_limit_service"], Field: "rate_limit_service", Reason: "set in more than one file"}
			}
			merged.RateLimitService = m.RateLimitService
			loc.origins["rate_limit_service"] = []origin{{file: src.Name}}
		}
		for i := range m.Services {
			loc.origins["services"] = append(loc.origins["services"], origin{src.Name, i})
		}
		for i := range m.Routes {
			loc.origins["routes"] = append(loc.origins["routes"], origin{src.Name, i})
		}
		for i := range m.Proxies {
			loc.origins["proxies"] = append(loc.origins["proxies"], origin{src.Name, i})
		}
		merged.Services = append(merged.Services, m.Services...)
		merged.Routes = append(merged.Routes, m.Routes...)
		merged.Proxies = append(merged.Proxies, m.Proxies...)
	}
	v := &validator{}
	v.mesh(merged)
	if len(v.errs) == 0 {
		return merged, nil
	}
	errs := make([]error, 0, len(v.errs))
	for _, fe := range v.errs {
		errs = append(errs, loc.locate(fe))
	}
	return nil, errors.Join(errs...)
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// decode parses one source once: the YAML tree is checked for unknown
// fields (as a strict decoder would), decoded, and kept for locating errors.
// Parsing dominates the cost of a reload, so it is not done twice.
func decode(src Source, root *yaml.Node, loc *locator) (*Mesh, error) {
	m := &Mesh{}
	if root == nil {
		root = &yaml.Node{}
		dec := yaml.NewDecoder(bytes.NewReader(src.Data))
		if err := dec.Decode(root); err != nil {
			if errors.Is(err, io.EOF) {
				return m, nil // empty, or comments only
			}
			return nil, yamlError(src.Name, err)
		}
		// A second document would be silently ignored; refuse it instead.
		var extra yaml.Node
		if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
			return nil, &Error{File: src.Name, Line: extra.Line, Reason: "more than one YAML document; put one model per file"}
		}
	}
	loc.roots[src.Name] = root
	// Decode first: it refuses excessive aliasing, which bounds the walk.
	err := root.Decode(m)
	var te *yaml.TypeError
	if err != nil && !errors.As(err, &te) {
		return nil, yamlError(src.Name, err)
	}
	var unknown []string
	if len(root.Content) > 0 {
		unknown = fieldChecker{}.check(root.Content[0], reflect.TypeOf(m).Elem(), nil, 0)
	}
	if len(unknown) > 0 || te != nil {
		if te != nil {
			unknown = append(unknown, te.Errors...)
		}
		sort.SliceStable(unknown, func(i, j int) bool { return msgLine(unknown[i]) < msgLine(unknown[j]) })
		return nil, yamlError(src.Name, &yaml.TypeError{Errors: unknown})
	}
	return m, nil
}

// msgLine is the line a yaml.v3 message starts with (0 if none).
func msgLine(msg string) int {
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// fieldChecker finds mapping keys that name no field of the struct they
// decode into. It remembers each struct's keys: building them per node was
// a fifth of a reload.
type fieldChecker map[reflect.Type]map[string]reflect.Type

// check reports those keys, worded as yaml.v3's strict decoder words them.
func (fc fieldChecker) check(n *yaml.Node, t reflect.Type, errs []string, depth int) []string {
	if depth > 100 {
		return errs // alias cycles: the decoder reports them itself
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias != nil {
			return fc.check(n.Alias, t, errs, depth+1)
		}
		return errs
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return errs
		}
		fields, ok := fc[t]
		if !ok {
			fields = yamlFields(t)
			fc[t] = fields
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMerge(k) {
				if v.Kind == yaml.SequenceNode {
					for _, c := range v.Content {
						errs = fc.check(c, t, errs, depth+1)
					}
				} else {
					errs = fc.check(v, t, errs, depth+1)
				}
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				errs = append(errs, fmt.Sprintf("line %d: field %s not found in type %s", k.Line, k.Value, t))
				continue
			}
			errs = fc.check(v, ft, errs, depth+1)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind == yaml.SequenceNode {
			for _, c := range n.Content {
				errs = fc.check(c, t.Elem(), errs, depth+1)
			}
		}
	case reflect.Map:
		if n.Kind == yaml.MappingNode {
			for i := 1; i < len(n.Content); i += 2 {
				errs = fc.check(n.Content[i], t.Elem(), errs, depth+1)
			}
		}
	}
	return errs
}

// isMerge: a "<<" merge key, as yaml.v3 recognises it.
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" &&
		(k.Tag == "" || k.Tag == "!" || k.Tag == "!!merge" || k.Tag == "tag:yaml.org,2002:merge")
}

// yamlFields maps a struct's YAML keys to field types (yaml.v3's rules:
// the tag's name, else the lowercased field name; "-" skips).
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// yamlError turns yaml.v3's messages into file:line: reason errors.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		for _, msg := range te.Errors {
			errs = append(errs, lineError(file, msg))
		}
		return errors.Join(errs...)
	}
	return lineError(file, strings.TrimPrefix(err.Error(), "yaml: "))
}

func lineError(file, msg string) error {
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &Error{File: file, Line: n, Reason: m[2]}
	}
	return &Error{File: file, Reason: msg}
}

// walk records the line of every field path in a YAML tree.
func walk(n *yaml.Node, path string, lines map[string]int) {
	// Aliases are not followed: they may be recursive, and their fields
	// are located at the anchor already.
	if _, ok := lines[path]; !ok {
		lines[path] = n.Line
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			lines[p] = k.Line
			walk(n.Content[i+1], p, lines)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			walk(c, fmt.Sprintf("%s[%d]", path, i), lines)
		}
	}
}

var topIndexRE = regexp.MustCompile(`^([a-z_]+)\[(\d+)\](.*)$`)

func (l *locator) locate(fe fieldError) *Error {
	e := &Error{Field: fe.path, Reason: fe.reason}
	filePath := fe.path
	if m := topIndexRE.FindStringSubmatch(fe.path); m != nil {
		i, _ := strconv.Atoi(m[2])
		if os := l.origins[m[1]]; i < len(os) {
			e.File = os[i].file
			filePath = fmt.Sprintf("%s[%d]%s", m[1], os[i].index, m[3])
		}
	} else if top := strings.SplitN(fe.path, ".", 2)[0]; len(l.origins[top]) > 0 {
		e.File = l.origins[top][0].file
	}
	if e.File == "" && len(l.roots) == 1 {
		for f := range l.roots {
			e.File = f
		}
	}
	// The exact field may be absent (a missing required field): use the
	// nearest enclosing one that exists.
	lines := l.fileLines(e.File)
	for p := filePath; p != ""; p = parent(p) {
		if n, ok := lines[p]; ok {
			e.Line = n
			break
		}
	}
	return e
}

func parent(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// SortedNames returns the keys of m, sorted; handy for deterministic output.
func SortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
