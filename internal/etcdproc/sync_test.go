package etcdproc_test

import (
	"io"
	"sync"
)

// syncWriter lets the test read what the member wrote while it may write.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
