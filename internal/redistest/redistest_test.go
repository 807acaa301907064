package redistest

import (
	"context"
	"testing"
)

func TestStartKillRestart(t *testing.T) {
	s := Start(t)
	if s.Port == 6379 {
		t.Fatal("must never use the default port")
	}
	ctx := context.Background()
	if r, err := s.Do(ctx, "SET", "k", "v"); err != nil || r != "+OK" {
		t.Fatalf("SET = %q %v", r, err)
	}
	if r, err := s.Do(ctx, "GET", "k"); err != nil || r != "v" {
		t.Fatalf("GET = %q %v", r, err)
	}
	s.Kill()
	if _, err := s.Do(ctx, "PING"); err == nil {
		t.Fatal("PING succeeded on a killed server")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Do(ctx, "PING"); err != nil || r != "+PONG" {
		t.Fatalf("after restart PING = %q %v", r, err)
	}
}
