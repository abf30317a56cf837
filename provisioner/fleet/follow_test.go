package fleet

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/internal/kv"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/inventory"
)

// A follower keeps its file_sd file and agent clients in step with the
// shared inventory, and writes nothing to the store.
func TestFollowPublishesWithoutWriting(t *testing.T) {
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(inventory.Host{Name: "hv-a1", MACs: []string{"52:54:00:aa:00:01"}, Agent: "192.0.2.1:9301",
		Role: inventory.RoleWorker, BMC: bmc.Config{Type: "ipmi", Address: "192.0.2.10", Username: "root", PasswordFile: "hv-a1.pass"}}); err != nil {
		t.Fatal(err)
	}
	fileSD := filepath.Join(t.TempDir(), "agents.json")
	p := &Provisioner{log: slog.New(slog.DiscardHandler), inv: inv, agents: agentapi.NewHosts(""), fileSD: fileSD}
	written := db.PagesWritten()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Follow(ctx) // publishes once, then sees ctx done
	data, err := os.ReadFile(fileSD)
	if err != nil || !strings.Contains(string(data), "192.0.2.1:9301") {
		t.Errorf("file_sd after Follow: %s, %v", data, err)
	}
	if got := db.PagesWritten(); got != written {
		t.Errorf("Follow wrote %d pages to the store", got-written)
	}
}
