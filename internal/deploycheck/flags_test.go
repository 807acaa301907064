package deploycheck

import (
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testbin"
)

// helpCache runs each binary's --help once per test.
type helpCache map[string]string

// checkCommand checks a container command against the binary's own --help
// and returns its flags (after any subcommand).
func (h helpCache) checkCommand(t *testing.T, where string, command []string) []string {
	t.Helper()
	args := command[1:]
	var sub []string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[:1], args[1:]
	}
	key := command[0] + " " + strings.Join(sub, " ")
	if _, ok := h[key]; !ok {
		h[key] = HelpOf(testbin.Build(t, Binaries[command[0]]), sub...)
	}
	if err := CheckFlags(h[key], args); err != nil {
		t.Errorf("%s: %s: %v", where, command[0], err)
	}
	return args
}
