package agent

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"caretaker/internal/libvirtconn"
)

// TestMain starts libvirt's event loop, as `caretaker agent` does, so the
// kvm collector counts lifecycle events in these tests too.
func TestMain(m *testing.M) {
	if err := libvirtconn.StartEventLoop(context.Background(), slog.New(slog.DiscardHandler)); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// apiError is the body of the API's error answers.
type apiError struct {
	Error string `json:"error"`
}
