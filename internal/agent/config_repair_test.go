package agent

import (
	"reflect"
	"testing"

	"caretaker/internal/golden"
	"caretaker/internal/overlayspec"
	"caretaker/internal/yamlfile"
)

func TestDesiredOverlays(t *testing.T) {
	t.Parallel()
	f, err := LoadFile("testdata/config/good-repair.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := []overlayspec.Overlay{
		{
			Cluster: "prod", Device: "vx-prod", Bridge: "br-prod", VNI: 100,
			Underlay: "eth1", Local: "10.0.0.11", Port: 4790, MTU: 1400,
			Peers: []overlayspec.Peer{{Host: "host-b", Address: "10.0.0.12"}},
		},
		// Without the repair fields: the defaults are overlaynet's.
		{Cluster: "lab", Device: "vx-lab", Bridge: "br-lab", VNI: 200},
	}
	if got := f.Overlays; !reflect.DeepEqual(got, want) {
		t.Errorf("Overlays:\n got %+v\nwant %+v", got, want)
	}
	if err := want[0].ValidateRepair(); err != nil {
		t.Errorf("a loaded overlay with an underlay does not validate: %v", err)
	}
}

func TestLoadFileGood(t *testing.T) {
	t.Parallel()
	golden.GoodFiles(t, "testdata/config/good*.yml", func(path string) error {
		_, err := LoadFile(path)
		return err
	})
}

// FuzzLoadFile checks that decoding never panics and that every overlay of
// a file that loads, given an underlay, is one overlaynet.Ensure accepts:
// the file's validation and the repair's agree.
func FuzzLoadFile(f *testing.F) {
	for _, s := range []string{
		"overlays:\n  - cluster: a\n    device: vx-a\n    bridge: br-a\n    vni: 1\n    underlay: eth0\n    local: 10.0.0.1\n    port: 4789\n    mtu: 1450\n    peers:\n      - host: b\n        address: 10.0.0.2\n",
		"overlays:\n  - cluster: a\n    device: vx-a\n    bridge: vx-a\n    vni: 1\n    underlay: vx-a\n    port: -1\n",
		"overlays:\n  - cluster: a\n    device: vx-a\n    bridge: br-a\n    local: ::ffff:0.0.0.0\n    mtu: 67\n",
		"neighbor_stale_after: 5m\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var file File
		if err := yamlfile.Decode("fuzz.yml", data, &file); err != nil {
			return
		}
		for i, o := range file.Overlays {
			if o.Underlay == "" {
				continue
			}
			if err := o.ValidateRepair(); err != nil {
				t.Errorf("overlay %d loads but does not validate for a repair: %v\n%s", i, err, data)
			}
		}
	})
}
