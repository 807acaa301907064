package rules

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ReadPath reads a rule file, or every *.yaml / *.yml file directly inside a
// directory. Hidden entries (".", e.g. a Kubernetes ConfigMap's "..data" and
// "..2024_..." directories) are skipped; the ConfigMap's visible names are
// symlinks through "..data", so they are followed.
func ReadPath(path string) ([]File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("rules %s: %w", path, err)
	}
	if !st.IsDir() {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("rules %s: %w", path, err)
		}
		return []File{{Name: path, Data: data}}, nil
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("rules %s: %w", path, err)
	}
	var files []File
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !IsRuleFile(name) {
			continue
		}
		full := filepath.Join(path, name)
		fst, err := os.Stat(full)
		if err != nil {
			return nil, fmt.Errorf("rules %s: %w", full, err)
		}
		if fst.IsDir() {
			continue
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return nil, fmt.Errorf("rules %s: %w", full, err)
		}
		files = append(files, File{Name: full, Data: data})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return files, nil
}

// IsRuleFile reports whether a file name has a rule-file extension.
func IsRuleFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

// Load reads and parses path.
func Load(path string) (*Config, error) { return LoadOptions(path, Options{}) }

// LoadOptions reads and parses path with options; a directory's files are
// parsed in name order.
func LoadOptions(path string, o Options) (*Config, error) {
	files, err := ReadPath(path)
	if err != nil {
		return nil, err
	}
	return ParseOptions(files, o)
}
