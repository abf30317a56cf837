// Package labbmc gives each simulated host of `caretaker lab` what a
// bare-metal host has for the provisioner: a real IPMI BMC and a firmware
// that PXE-boots over HTTP.
//
// Start runs one OpenIPMI ipmi_sim per host on a loopback UDP port
// (lanplus, one admin user). ipmi_sim hands every chassis operation to its
// chassis_control program, a small /bin/sh script (chassisScript) that
// keeps the host's power and boot device in two files, answers ipmi_sim's
// "get" requests from them, and writes one line per change to a FIFO that
// this process reads: power changes reach Options.OnPower with the boot
// device they boot from. The state lives with the script, so a "get" right
// after a "set" (ipmitool power off, then power status) always sees it.
//
// Firmware is what a host does when it is powered on with boot device pxe:
// it fetches the server's chain script (/pxe/boot.ipxe) as iPXE does after
// DHCP, follows it to the attempt's iPXE script and runs the few iPXE
// commands a profile for the lab uses. LabProfile is that profile.
package labbmc
