package deploycheck

import (
	"fmt"
	"os/exec"
	"strings"
)

// Binaries are the commands a sidemesh container may run.
var Binaries = map[string]string{
	"controlplane": "./controlplane/cmd/controlplane",
	"hds":          "./services/hds/cmd/hds",
	"rls":          "./services/rls/cmd/rls",
	"proxy":        "./proxy/cmd/proxy",
	"loadtest":     "./loadtest/cmd/loadtest",
	"meshrun":      "./cmd/meshrun",
}

// HelpOf runs a binary (plus a subcommand, if any) with --help and returns
// what it printed.
func HelpOf(bin string, sub ...string) string {
	args := append(append([]string(nil), sub...), "--help")
	out, _ := exec.Command(bin, args...).CombinedOutput()
	return string(out)
}

// FlagsIn returns the --flag names used in a command line.
func FlagsIn(args []string) []string {
	var fs []string
	for _, a := range args {
		if strings.HasPrefix(a, "--") {
			name := strings.TrimPrefix(a, "--")
			name, _, _ = strings.Cut(name, "=")
			fs = append(fs, name)
		}
	}
	return fs
}

// CheckFlags says which flags of args the help text does not know.
func CheckFlags(help string, args []string) error {
	var unknown []string
	for _, f := range FlagsIn(args) {
		if !strings.Contains(help, "-"+f+" ") && !strings.Contains(help, "-"+f+"\n") && !strings.Contains(help, "-"+f+"\t") {
			unknown = append(unknown, "--"+f)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("flags not accepted by the binary: %s", strings.Join(unknown, ", "))
	}
	return nil
}

// FlagValue returns the value after --name in args.
func FlagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}
