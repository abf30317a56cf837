// Package provisioner will hold the fleet's inventory, the BMC drivers, PXE,
// the host state machine, guest clusters and their placement. It is empty
// until its issue is built; the remediation engine's recreate-vm and
// reprovision-host actions will call it through an interface.
package provisioner
