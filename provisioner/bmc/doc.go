// Package bmc drives the baseboard management controllers of the fleet's
// hosts: power status, on, off, cycle and a one-time boot from PXE, over
// IPMI (lanplus) or Redfish.
package bmc

import _ "github.com/bougou/go-ipmi/pkg/client" // the IPMI driver's dependency, pinned in go.mod
