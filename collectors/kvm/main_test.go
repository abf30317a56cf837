package kvm

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"caretaker/internal/libvirtconn"
)

func TestMain(m *testing.M) {
	// The agent starts libvirt's event loop before its first connection;
	// it must be registered once per process, before any connection, so
	// it is started here rather than in the tests that count events.
	if err := libvirtconn.StartEventLoop(context.Background(), slog.New(slog.DiscardHandler)); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}
