package overlay

import (
	"testing"

	"caretaker/internal/overlaynet/nstest"
)

// testNS is a network namespace of the test's own (nstest), with the
// builders of this package's fixtures as methods.
type testNS struct{ nstest.NS }

// newTestNS creates a network namespace deleted when the test ends; it
// skips the test without root or iproute2.
func newTestNS(tb testing.TB) testNS { return testNS{nstest.New(tb)} }
