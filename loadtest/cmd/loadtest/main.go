// Command loadtest measures sidemesh's services: subcommands rls, noop-rls,
// http, upstream, xds, hds, bench and compare.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/bench"
	"github.com/sidemesh/sidemesh/loadtest/hdsload"
	"github.com/sidemesh/sidemesh/loadtest/httpload"
	"github.com/sidemesh/sidemesh/loadtest/report"
	"github.com/sidemesh/sidemesh/loadtest/rlsload"
	"github.com/sidemesh/sidemesh/loadtest/xdsload"
	"github.com/sidemesh/sidemesh/loadtest/xdsstatic"
)

func specs() map[string]func() app.Spec {
	return map[string]func() app.Spec{
		"rls":        rlsload.Spec,
		"noop-rls":   rlsload.NoopSpec,
		"http":       httpload.Spec,
		"upstream":   httpload.UpstreamSpec,
		"xds":        xdsload.Spec,
		"xds-static": xdsstatic.Spec,
		"hds":        hdsload.Spec,
		"bench":      bench.Spec,
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	all := specs()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout, all)
		if len(args) == 0 {
			return app.ExitUsage
		}
		return app.ExitOK
	}
	if args[0] == "--compare" || args[0] == "compare" {
		return compare(args[1:], stdout, stderr)
	}
	mk, ok := all[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "loadtest: unknown subcommand %q\n", args[0])
		usage(stderr, all)
		return app.ExitUsage
	}
	return app.Exec(ctx, mk(), args[1:], stdout, stderr)
}

func usage(w io.Writer, all map[string]func() app.Spec) {
	fmt.Fprintf(w, "loadtest — load-test harness for sidemesh\n\nUsage: loadtest <subcommand> [flags]   (loadtest <subcommand> --help for its flags)\n\nSubcommands:\n")
	var names []string
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, all[n]().Summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "compare", "loadtest --compare A.json B.json: print two --json results side by side with ratios B/A")
}

func compare(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "loadtest: --compare needs exactly two JSON result files: loadtest --compare A.json B.json")
		return app.ExitUsage
	}
	a, err := report.ReadJSON(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return app.ExitUsage
	}
	b, err := report.ReadJSON(args[1])
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return app.ExitUsage
	}
	report.Compare(stdout, "A "+args[0], a, "B "+args[1], b)
	return app.ExitOK
}
