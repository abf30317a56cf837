package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadFile(t *testing.T) {
	f, err := LoadFile("testdata/config/good.yml")
	if err != nil {
		t.Fatal(err)
	}
	ovs := f.OverlayList()
	if len(ovs) != 1 || len(ovs[0].Peers) != 2 || ovs[0].Peers[1].Address.String() != "10.0.0.13" {
		t.Fatalf("overlays = %+v", ovs)
	}
	if _, err := LoadFile("../../deploy/agent.example.yml"); err != nil {
		t.Errorf("deploy example: %v", err)
	}
}

// Each bad file's exact error is in a .err golden file beside it.
func TestLoadFileBad(t *testing.T) {
	files, _ := filepath.Glob("testdata/config/bad-*.yml")
	files = append(files, "testdata/config/unknown-field.yml")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, err := LoadFile(file)
			if err == nil {
				t.Fatal("LoadFile succeeded")
			}
			golden := strings.TrimSuffix(file, ".yml") + ".err"
			if *update {
				os.WriteFile(golden, []byte(err.Error()+"\n"), 0o644)
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("read golden (run with -update): %v", rerr)
			}
			if err.Error()+"\n" != string(want) {
				t.Errorf("error:\n%s\nwant:\n%s", err, want)
			}
		})
	}
}
