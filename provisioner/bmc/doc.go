// Package bmc drives the baseboard management controllers of the fleet's
// hosts: power status, on, off, cycle and a one-time boot from PXE, over
// IPMI (lanplus) or Redfish. New picks the driver from a Config; both
// drivers bound every operation by Config.Timeout per attempt and retry a
// failed attempt Config.Retries times, so a BMC that does not answer is an
// error wrapping ErrNoAnswer, never a hang.
package bmc
