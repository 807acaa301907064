package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestDispatch(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), nil, &out, &errb); code != 2 || !strings.Contains(out.String(), "noop-rls") {
		t.Errorf("no args: exit %d, usage %q", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown subcommand") {
		t.Errorf("unknown: exit %d stderr %q", code, errb.String())
	}
	for _, sub := range []string{"rls", "noop-rls", "http", "upstream", "xds", "xds-static", "hds", "bench"} {
		out.Reset()
		if code := run(context.Background(), []string{sub, "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "loadtest "+sub) {
			t.Errorf("%s --help: exit %d out %q", sub, code, out.String())
		}
	}
	errb.Reset()
	if code := run(context.Background(), []string{"--compare", "only-one.json"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "exactly two") {
		t.Errorf("compare: exit %d stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"--compare", "/nonexistent/a.json", "/nonexistent/b.json"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "a.json") {
		t.Errorf("compare missing file: exit %d stderr %q", code, errb.String())
	}
}
