#!/usr/bin/env bash
# Prepares a Debian 12 machine, as root, for real QEMU guests: installs
# libvirtd and QEMU when missing, starts virtlogd and libvirtd when they are
# not running (containers have no systemd), and gives /dev/kvm the owner and
# mode Debian's udev rule gives it. Safe to run again.
set -euo pipefail

log() { echo "setup: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
	log "not root: skipping (the lab falls back to libvirt's test driver without libvirtd)"
	exit 0
fi

need=()
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)
command -v virsh >/dev/null || need+=(libvirt-clients)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if ((${#need[@]})); then
	if [[ ${CARETAKER_NO_INSTALL:-} == 1 ]]; then
		log "missing ${need[*]}; CARETAKER_NO_INSTALL=1, not installing"
		exit 0
	fi
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's udev rule makes /dev/kvm root:kvm 0660. Without udev (containers)
# it stays root-only, and libvirt 9.0 then finds KVM "enabled when probing
# but not available now" and re-probes QEMU on every call: defining a guest
# takes 30 s instead of 0.05 s. Guests stay domain type qemu either way.
if [[ -c /dev/kvm ]] && getent group kvm >/dev/null && [[ $(stat -c %G:%a /dev/kvm) != kvm:660 ]]; then
	log "giving /dev/kvm the owner and mode of Debian's udev rule (root:kvm 0660)"
	chgrp kvm /dev/kvm
	chmod 0660 /dev/kvm
fi

mkdir -p /var/log/libvirt /var/run/libvirt
if ! pgrep -x virtlogd >/dev/null; then
	log "starting virtlogd"
	virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
	log "starting libvirtd"
	libvirtd -d
	for _ in $(seq 100); do [[ -S /var/run/libvirt/libvirt-sock ]] && break; sleep 0.1; done
fi

