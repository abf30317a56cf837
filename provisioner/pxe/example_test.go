package pxe

import "testing"

// The example in deploy/ is what operators copy: it must load and match.
func TestDeployExample(t *testing.T) {
	t.Parallel()
	cfg, err := Load("../../deploy/pxe.example.yml")
	if err != nil {
		t.Fatal(err)
	}
	if g, p, ok := cfg.Match(map[string]string{"mac": "52:54:00:aa:bb:02"}); !ok || g.ID != "hv-b1" || p.ID != "debian-install" {
		t.Errorf("Match = %v, %v, %v", g, p, ok)
	}
}
