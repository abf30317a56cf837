// Package provisioner holds no code of its own; its packages are the
// server's provisioner:
//
//   - inventory: the fleet's hosts (a file, and changes through the API),
//     their store, HTTP handler and file_sd file for Prometheus;
//   - bmc: the BMC drivers (IPMI, Redfish) that power hosts and boot them
//     from the network;
//   - pxe: iPXE scripts, dnsmasq configuration and the boot-completion
//     callback;
//   - hoststate: the host state machine (registered, powering on, PXE
//     booting, installing, ready, failed) and its history;
//   - placement: where a guest cluster's nodes go;
//   - clusters: guest clusters, their store, HTTP handler and reconciler;
//   - fleet: all of these put together as the server runs them, making
//     nodes and overlays through the hosts' agents (internal/agentapi), and
//     serving the provisioner's API; it is the remediation engine's
//     Provisioner for recreate-vm and reprovision-host.
//
// The libvirt domains of the nodes are made on each host by the agent
// (internal/agent/guests).
package provisioner
