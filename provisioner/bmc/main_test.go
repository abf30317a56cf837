package bmc

import (
	"os"
	"testing"
	"time"
)

// TestMain shortens the pause between attempts: the tests check which
// attempts are made and what they report, not how long the BMC is given
// to recover, and the default pauses would add seconds of waiting.
func TestMain(m *testing.M) {
	retryDelay = time.Millisecond
	os.Exit(m.Run())
}
