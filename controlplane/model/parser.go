package model

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"gopkg.in/yaml.v3"
)

// Parser parses models as Parse does, and remembers the YAML tree of each
// entry of a file's top-level `services:` list by its text. A reload after
// one endpoint changed in a 500-service file then parses one entry and the
// rest of the file, not the whole file: YAML parsing was most of a reload's
// time (54 ms of ≈ 86 ms for 500 services × 10 endpoints, more under load)
// and every client's push waits for it.
//
// The shortcut is taken only when the text splits cleanly (see split);
// anything it cannot split, and any model that fails to load, goes through
// Parse, so results and error messages (with their line numbers) are
// Parse's own. FuzzParserMatchesParse checks the two agree.
type Parser struct {
	mu    sync.Mutex
	items map[string]*yaml.Node // entry text -> parsed entry, from the last parse
}

// NewParser returns a Parser with nothing remembered.
func NewParser() *Parser { return &Parser{} }

// Parse decodes and validates sources as one model, like the package's Parse.
func (p *Parser) Parse(srcs ...Source) (*Mesh, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]*yaml.Node{}
	roots := make([]*yaml.Node, len(srcs))
	split := false
	for i, src := range srcs {
		roots[i] = p.root(src.Data, seen)
		split = split || roots[i] != nil
	}
	p.items = seen // remember only what the current model holds
	if !split {
		return Parse(srcs...)
	}
	m, err := parse(srcs, roots)
	if err != nil {
		return Parse(srcs...) // error lines come from a whole parse
	}
	return m, nil
}

// root builds data's YAML tree from its parts: the text without the
// services entries, and each entry (remembered or parsed now). nil: the
// text does not split cleanly, parse it whole.
func (p *Parser) root(data []byte, seen map[string]*yaml.Node) *yaml.Node {
	rest, entries, ok := split(data)
	if !ok {
		return nil
	}
	root, ok := parseOne(rest)
	if !ok || root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	top := root.Content[0]
	var value *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		if k := top.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "services" {
			if value != nil {
				return nil // a second services key: let Parse report it
			}
			value = top.Content[i+1]
			if value.Kind != yaml.ScalarNode || value.Tag != "!!null" || value.Value != "" {
				return nil
			}
			seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: value.Line, Column: value.Column}
			top.Content[i+1] = seq
			value = seq
		}
	}
	if value == nil {
		return nil
	}
	for _, text := range entries {
		n, ok := seen[text]
		if !ok {
			if n, ok = p.items[text]; !ok {
				doc, parsed := parseOne([]byte(text))
				if !parsed || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.SequenceNode || len(doc.Content[0].Content) != 1 {
					return nil
				}
				n = doc.Content[0].Content[0]
			}
			seen[text] = n
		}
		value.Content = append(value.Content, n)
	}
	return root
}

// parseOne parses text that must hold exactly one YAML document.
func parseOne(text []byte) (*yaml.Node, bool) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&doc); err != nil {
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, false
	}
	return &doc, true
}

// split cuts a model's text into the lines of its top-level `services:`
// list entries (each entry's text, at its own indentation) and the rest
// (the text without them, so that `services:` has no value there). It
// refuses text with document markers or directives, and a list whose
// entries are not a plain block sequence at one indentation: an entry runs
// from a "- " line at that indentation to the next one, taking lines
// indented deeper, blank lines and comments; any other line ends the
// list. A cut in the wrong place leaves unbalanced text, which fails to
// parse and sends the model through Parse.
func split(data []byte) (rest []byte, entries []string, ok bool) {
	type line struct{ from, to int } // byte range, including the newline
	var lines []line
	for i := 0; i < len(data); {
		j := bytes.IndexByte(data[i:], '\n')
		end := len(data)
		if j >= 0 {
			end = i + j + 1
		}
		lines = append(lines, line{i, end})
		i = end
	}
	text := func(l line) []byte { return bytes.TrimRight(data[l.from:l.to], " \t\r\n") }
	indent := func(b []byte) int { return len(b) - len(bytes.TrimLeft(b, " ")) }
	blank := func(b []byte) bool {
		t := bytes.TrimLeft(b, " \t")
		return len(t) == 0 || t[0] == '#'
	}
	head := -1
	for i, l := range lines {
		t := text(l)
		if bytes.HasPrefix(t, []byte("---")) || bytes.HasPrefix(t, []byte("...")) || bytes.HasPrefix(t, []byte("%")) {
			return nil, nil, false
		}
		if head < 0 && (bytes.Equal(t, []byte("services:")) || bytes.HasPrefix(t, []byte("services: #")) || bytes.HasPrefix(t, []byte("services:\t#"))) {
			head = i
		}
	}
	if head < 0 {
		return nil, nil, false
	}
	first := head + 1
	for first < len(lines) && blank(text(lines[first])) {
		first++
	}
	if first == len(lines) {
		return nil, nil, false
	}
	in := indent(text(lines[first]))
	isEntry := func(t []byte) bool {
		return indent(t) == in && (bytes.HasPrefix(t[in:], []byte("- ")) || len(t) == in+1 && t[in] == '-')
	}
	if !isEntry(text(lines[first])) {
		return nil, nil, false
	}
	end := first
	var cur []byte
	for ; end < len(lines); end++ {
		t := text(lines[end])
		switch {
		case isEntry(t):
			if cur != nil {
				entries = append(entries, string(cur))
			}
			cur = append([]byte(nil), data[lines[end].from:lines[end].to]...)
			continue
		case blank(t) || indent(t) > in:
			cur = append(cur, data[lines[end].from:lines[end].to]...)
			continue
		}
		break
	}
	entries = append(entries, string(cur))
	rest = make([]byte, 0, len(data))
	rest = append(rest, data[:lines[first].from]...)
	if end < len(lines) {
		rest = append(rest, data[lines[end].from:]...)
	}
	return rest, entries, true
}
