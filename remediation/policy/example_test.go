package policy

import "testing"

// The example shipped in deploy/ must stay a valid policy.
func TestDeployExample(t *testing.T) {
	if _, err := Load("../../deploy/policy.example.yml"); err != nil {
		t.Fatal(err)
	}
}
