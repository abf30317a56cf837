#!/usr/bin/env bash
# The one set-up step of caretaker on Debian 12: `make build`, `make run`,
# `make test` and .ci/run call it first. It installs the Debian packages that
# are missing (as root) and starts the daemons the lab and the tests use. It
# is idempotent and takes a fraction of a second when all is there.
#
#   deploy/setup.sh build   nothing but Go: caretaker is pure Go (no cgo)
#   deploy/setup.sh run     build + libvirtd, QEMU and the tools of the lab
#   deploy/setup.sh test    run + the real programs the tests run against
#
# Not root, it installs nothing: it names what is missing and the one command
# that installs it, and exits 1 when the build or the tests cannot go on (for
# `run`, a missing QEMU or a libvirtd not running only means the lab uses
# libvirt's test driver, in a libvirtd of its own; the libvirtd program it
# needs all the same). CARETAKER_NO_INSTALL=1 makes root behave the same way.
set -euo pipefail

# The packages, in one place. A package's first word is the reason it is here.
# The build needs Go alone: libvirt is spoken to over its socket in pure Go
# (github.com/digitalocean/go-libvirt), with no C library or headers.
build_pkgs=()
run_pkgs=(
	libvirt-daemon-system libvirt-clients # libvirtd, virtlogd, virsh, virt-admin
	qemu-system-x86 qemu-utils ipxe-qemu  # TCG guests, qemu-img, PXE ROMs
	iproute2 procps                       # ip, bridge; sysctl
	genisoimage                           # cloud-init seeds of cluster nodes
	etcd-server                           # /usr/bin/etcd: the HA lab's and tests' members (issue #13)
)
test_pkgs=(
	prometheus prometheus-alertmanager # promtool, a real Alertmanager
	openipmi ipmitool                  # ipmi_sim BMC
	dnsmasq-base busybox               # PXE: DHCP/TFTP server, udhcpc client
	util-linux                         # setsid
	systemd adduser                    # systemd-analyze verify/security of the units; the packages' maintainer scripts
	mmdebstrap podman                  # the container image's Debian root; podman load of the image (internal/ociimage)
	chromium                           # the console's browser tests (chromedp, headless)
)

log() { echo "setup: $*" >&2; }

mode=${1:-test}
case $mode in
build) want=("${build_pkgs[@]}") ;;
run) want=("${build_pkgs[@]}" "${run_pkgs[@]}") ;;
test) want=("${build_pkgs[@]}" "${run_pkgs[@]}" "${test_pkgs[@]}") ;;
*)
	echo "usage: deploy/setup.sh build|run|test" >&2
	exit 2
	;;
esac

# missing prints the packages of $@ that dpkg does not have installed.
missing() {
	local status p
	# dpkg-query exits 1 when it knows a package not at all: not an error here.
	status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
	for p in "$@"; do
		grep -qxF "$p installed" <<<"$status" || echo "$p"
	done
}

if ! command -v dpkg-query >/dev/null; then
	log "not a Debian system: install the equivalents of: ${want[*]}"
	exit 0
fi

need=()
((${#want[@]} == 0)) || mapfile -t need < <(missing "${want[@]}")
root=0
[[ $(id -u) -eq 0 && ${CARETAKER_NO_INSTALL:-} != 1 ]] && root=1

if ((${#need[@]})) && ((root)); then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Services are started below, by hand: containers and chroots have no
	# systemd, and a package's postinst must not try.
	# A config file the machine already has (an operator's qemu.conf) is
	# kept, never replaced and never asked about.
	# etcd-server's postinst starts a system etcd on 127.0.0.1:2379/2380
	# (its init script where /sbin/init exists, its systemd unit under
	# systemd). The lab and the tests run their own members on free ports
	# and never want it: while apt-get runs, a policy-rc.d (unless the
	# machine has its own) denies etcd and answers for every other service
	# what invoke-rc.d assumes without one (block when there is no init).
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [[ ! -e $policy ]]; then
		printf '%s\n' '#!/bin/sh' '# deploy/setup.sh of caretaker, for the duration of its apt-get install' \
			'case $1 in etcd | etcd.service | etcd2.service) exit 101 ;; esac' \
			'[ -e /sbin/init ] || exit 101' 'exit 0' >"$policy"
		chmod 0755 "$policy"
		own_policy=1
		trap 'rm -f "$policy"' EXIT # also when apt-get is interrupted
	fi
	aptlog=$(mktemp)
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"; } >"$aptlog" 2>&1; then
		tail -n 30 "$aptlog" >&2
		log "installing ${need[*]} failed (above: the end of apt-get's output)"
		rm -f "$aptlog"
		exit 1
	fi
	if ((own_policy)); then
		rm -f "$policy"
		trap - EXIT
	fi
	rm -f "$aptlog"
	# Under systemd the unit is still enabled for the next boot, and a
	# machine's own permissive policy-rc.d may have let it start: an etcd
	# installed here is for the tests only, so it is disabled and stopped.
	if [[ " ${need[*]} " == *" etcd-server "* ]]; then
		if [[ -d /run/systemd/system ]]; then
			systemctl disable --now --quiet etcd.service 2>/dev/null || true
		elif [[ -s /run/etcd.pid ]] && kill -0 "$(cat /run/etcd.pid)" 2>/dev/null; then
			/etc/init.d/etcd stop >/dev/null 2>&1 || true
		fi
	fi
	mapfile -t need < <(missing "${want[@]}")
fi

if ((${#need[@]})); then
	sudo=""
	[[ $(id -u) -eq 0 ]] || sudo="sudo "
	log "missing Debian packages: ${need[*]}"
	log "install them with: ${sudo}apt-get update && ${sudo}apt-get install -y --no-install-recommends ${need[*]}"
	log "(or run this as root: ${sudo}bash deploy/setup.sh $mode)"
	need_build=()
	((${#build_pkgs[@]} == 0)) || mapfile -t need_build < <(missing "${build_pkgs[@]}")
	if [[ $mode != run || ${#need_build[@]} -gt 0 ]]; then
		exit 1
	fi
	if ! command -v libvirtd >/dev/null && [[ ! -x /usr/sbin/libvirtd ]]; then
		log "the lab needs the libvirtd program even for libvirt's test driver, which runs inside it: install libvirt-daemon (or all of the above)"
		exit 1
	fi
	[[ " ${need[*]} " == *" etcd-server "* ]] &&
		log "without etcd-server, caretaker lab --servers N builds etcd from the Go module proxy"
	[[ " ${need[*]} " == *" etcd-server "* && ${#need[@]} -eq 1 ]] ||
		log "the lab will run on libvirt's test driver, in a libvirtd of its own (no real guests)"
	exit 0
fi

[[ $mode == build ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	[[ -S /var/run/libvirt/libvirt-sock ]] ||
		log "not root: libvirtd is not started; the lab runs on libvirt's test driver, in a libvirtd of its own"
	exit 0
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

# running says whether the daemon whose pid file is $1 runs. Pid files, not
# pgrep: a chroot shares the machine's processes but has its own /run.
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p /var/log/libvirt /var/run/libvirt
if ! running /run/virtlogd.pid; then
	log "starting virtlogd"
	virtlogd -d
fi
if ! running /run/libvirtd.pid; then
	log "starting libvirtd"
	rm -f /var/run/libvirt/libvirt-sock
	libvirtd -d
	for _ in $(seq 100); do
		[[ -S /var/run/libvirt/libvirt-sock ]] && break
		sleep 0.1
	done
	[[ -S /var/run/libvirt/libvirt-sock ]] || {
		log "libvirtd did not open /var/run/libvirt/libvirt-sock within 10 s"
		exit 1
	}
fi
