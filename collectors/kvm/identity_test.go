package kvm

import (
	"reflect"
	"testing"

	"caretaker/internal/guestmeta"
)

func TestClusterRoleFromName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		cluster, role string
		ok            bool
	}{
		{name: "prod-worker-3", cluster: "prod", role: "worker", ok: true},
		{name: "prod-cp-1", cluster: "prod", role: "cp", ok: true},
		{name: "prod-eu-cp-12", cluster: "prod-eu", role: "cp", ok: true},
		{name: "a-b-0", cluster: "a", role: "b", ok: true},
		{name: "web-3"},           // no role
		{name: "prod-worker"},     // no number
		{name: "prod-worker-x1"},  // number is not decimal
		{name: "prod-worker-+1"},  // nor is a sign
		{name: "prod--3"},         // empty role
		{name: "-worker-3"},       // empty cluster
		{name: "prod-worker-3-"},  // empty number
		{name: "scratch"},         // no dash at all
		{name: ""},                // nothing
		{name: "prod_worker_3"},   // not the separator
		{name: "prod-worker-1.5"}, // not an integer
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster, role, ok := ClusterRoleFromName(tt.name)
			if cluster != tt.cluster || role != tt.role || ok != tt.ok {
				t.Errorf("ClusterRoleFromName(%q) = %q, %q, %v; want %q, %q, %v", tt.name, cluster, role, ok, tt.cluster, tt.role, tt.ok)
			}
		})
	}
}

func TestClusterRole(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc          string
		name          string
		id            *identity
		cluster, role string
	}{
		{desc: "metadata wins over the name", name: "prod-worker-3",
			id: &identity{hasMeta: true, meta: guestmeta.Metadata{Cluster: "lab", Role: "cp"}}, cluster: "lab", role: "cp"},
		{desc: "metadata with a cluster only is not mixed with the name", name: "prod-worker-3",
			id: &identity{hasMeta: true, meta: guestmeta.Metadata{Cluster: "lab"}}, cluster: "lab"},
		{desc: "metadata with an intent only falls back on the name", name: "prod-worker-3",
			id: &identity{hasMeta: true, meta: guestmeta.Metadata{Intent: guestmeta.IntentRunning}}, cluster: "prod", role: "worker"},
		{desc: "no metadata", name: "prod-worker-3", id: &identity{}, cluster: "prod", role: "worker"},
		{desc: "identity unread", name: "prod-worker-3", cluster: "prod", role: "worker"},
		{desc: "neither", name: "scratch", id: &identity{}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cluster, role := clusterRole(tt.name, tt.id)
			if cluster != tt.cluster || role != tt.role {
				t.Errorf("clusterRole(%q) = %q, %q; want %q, %q", tt.name, cluster, role, tt.cluster, tt.role)
			}
		})
	}
}

func TestParseIdentity(t *testing.T) {
	t.Parallel()
	const persistent = `<domain type='qemu'>
  <name>prod-worker-3</name>
  <metadata>
    <caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1"><caretaker:intent>running</caretaker:intent><caretaker:cluster>prod</caretaker:cluster></caretaker:guest>
  </metadata>
  <devices>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br-prod'/></interface>
  </devices>
</domain>`
	// The live definition has the devices and the network's bridge; its
	// metadata (here without the intent set with --config) is not used.
	const live = `<domain type='qemu' id='7'>
  <name>prod-worker-3</name>
  <metadata>
    <caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1"><caretaker:cluster>prod</caretaker:cluster></caretaker:guest>
  </metadata>
  <devices>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default' portid='0c3b3b2a-0000-4000-8000-000000000001' bridge='virbr0'/><target dev='vnet4'/></interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br-prod'/><target dev='vnet5'/></interface>
    <interface type='direct'><mac address='52:54:00:00:00:03'/><source dev='eth0' mode='bridge'/><target dev='macvtap0'/></interface>
  </devices>
</domain>`
	tests := []struct {
		name             string
		persistent, live string
		want             identity
	}{
		{
			name:       "running",
			persistent: persistent, live: live,
			want: identity{
				meta: guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "prod"}, hasMeta: true,
				ifaces: []iface{
					{device: "vnet4", bridge: "virbr0", mac: "52:54:00:00:00:01"},
					{device: "vnet5", bridge: "br-prod", mac: "52:54:00:00:00:02"},
					{device: "macvtap0", mac: "52:54:00:00:00:03"},
				},
			},
		},
		{
			name:       "shut off",
			persistent: persistent, live: persistent,
			want: identity{
				meta: guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "prod"}, hasMeta: true,
				ifaces: []iface{
					{mac: "52:54:00:00:00:01"},
					{bridge: "br-prod", mac: "52:54:00:00:00:02"},
				},
			},
		},
		{
			name:       "no metadata, no devices",
			persistent: `<domain type='test'><name>scratch</name></domain>`,
			live:       `<domain type='test'><name>scratch</name></domain>`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIdentity(tt.persistent, tt.live)
			if err != nil {
				t.Fatalf("parseIdentity: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseIdentity =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
	if _, err := parseIdentity("<domain", "<domain"); err == nil {
		t.Errorf("parseIdentity of broken XML succeeded")
	}
}
