package agent

import (
	"caretaker/internal/golden"
	"testing"
)

func TestLoadFile(t *testing.T) {
	t.Parallel()
	f, err := LoadFile("testdata/config/good.yml")
	if err != nil {
		t.Fatal(err)
	}
	ovs := f.Overlays
	if len(ovs) != 1 || len(ovs[0].Peers) != 2 || ovs[0].Peers[1].Address != "10.0.0.13" || ovs[0].Peers[1].Host != "host-c" {
		t.Fatalf("overlays = %+v", ovs)
	}
	if _, err := LoadFile("../../deploy/agent.example.yml"); err != nil {
		t.Errorf("deploy example: %v", err)
	}
}

// Each bad file's exact error is in a .err golden file beside it.
func TestLoadFileBad(t *testing.T) {
	t.Parallel()
	golden.BadFiles(t, "testdata/config/bad-*.yml", func(path string) error {
		_, err := LoadFile(path)
		return err
	}, *update)
}
