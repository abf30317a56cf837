package inventory

import "testing"

// The example in deploy/ is what operators copy: it must load.
func TestDeployExample(t *testing.T) {
	inv, err := Load("../../deploy/inventory.example.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Hosts) != 2 || inv.Hosts[1].BMC.Type != "redfish" {
		t.Errorf("hosts = %+v", inv.Hosts)
	}
}
