// Package syncbuf is a bytes.Buffer safe for concurrent writers, for tests
// that capture a child process's or logger's output while reading it.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer serializes Write and String.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
