// Package harnesstest runs a scenario subcommand in-process for tests and
// decodes its --json result.
package harnesstest

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/sidemesh/sidemesh/internal/app"
	"github.com/sidemesh/sidemesh/loadtest/report"
)

// Exec runs spec with args plus --json and returns the exit code, the
// decoded result (empty if none was printed) and stderr.
func Exec(t testing.TB, spec app.Spec, args ...string) (int, *report.Result, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := app.Exec(context.Background(), spec, append(args, "--json"), &out, &errb)
	var r report.Result
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("bad JSON %q: %v", out.String(), err)
		}
	}
	return code, &r, errb.String()
}
