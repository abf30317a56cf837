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
	openipmi ipmitool                     # ipmi_sim: the lab hosts' BMCs; ipmitool to try them
	busybox                               # ping and wget from inside a lab host's namespace
)
test_pkgs=(
	prometheus prometheus-alertmanager # promtool, a real Alertmanager
	dnsmasq-base                       # PXE: DHCP/TFTP server (busybox's udhcpc is the client)
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

# The lab's guests boot a real Linux kernel with a busybox initramfs
# (internal/guestos builds it). Debian's kernel and busybox-static are
# downloaded, never installed: the pieces the guests need are copied out of
# the packages into guest_os_dir, which internal/guestos.Check reads the same
# way as guest_os_complete. The modules are those of the virtio NIC and of
# QEMU's ISA pvpanic device, with what they depend on (modinfo -F depends),
# in the order the guest's /init loads them.
guest_os_dir=/var/cache/caretaker/guest-os
guest_os_modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	failover net_failover virtio_net pvpanic pvpanic-mmio)
guest_os_fix="bash deploy/setup.sh run (as root, with Debian's apt sources reachable)"

guest_os_complete() {
	local m
	[[ -s $guest_os_dir/VERSION && -s $guest_os_dir/vmlinuz && -x $guest_os_dir/busybox ]] || return 1
	for m in "${guest_os_modules[@]}"; do
		[[ -s $guest_os_dir/modules/$m.ko ]] || return 1
	done
}

# guest_os_download downloads the kernel package linux-image-amd64 depends
# on and busybox-static into the current directory and prints the kernel
# package's name; apt's complaints go to the file $1.
guest_os_download() {
	local kpkg
	kpkg=$(apt-cache depends linux-image-amd64 2>"$1" | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[[ -n $kpkg ]] || return 1
	apt-get download -qq "$kpkg" busybox-static >"$1" 2>&1 || return 1
	echo "$kpkg"
}

# fetch_guest_os fills guest_os_dir: in a temporary directory next to it,
# renamed into place when complete. It runs in a subshell of its own (the
# trap); each step says what failed.
fetch_guest_os() (
	local tmp stage kpkg kver m f
	mkdir -p "$(dirname "$guest_os_dir")" || return 1
	tmp=$(mktemp -d) || return 1
	stage=$(mktemp -d "$guest_os_dir.new.XXXXXX") || return 1
	trap 'rm -rf "$tmp" "$stage"' EXIT
	# apt-get downloads as its sandbox user _apt, who must write here.
	chmod 0755 "$tmp"
	mkdir "$tmp/deb" "$tmp/root"
	! id -u _apt >/dev/null 2>&1 || chown _apt "$tmp/deb"
	cd "$tmp/deb" || return 1
	if ! kpkg=$(guest_os_download "$tmp/apt.log"); then
		# The lists may be missing (a fresh container): update once.
		apt-get update -qq >"$tmp/apt.log" 2>&1 || {
			tail -n 10 "$tmp/apt.log" >&2
			log "guest OS: apt-get update failed (above: the end of its output)"
			return 1
		}
		kpkg=$(guest_os_download "$tmp/apt.log") || {
			tail -n 10 "$tmp/apt.log" >&2
			log "guest OS: apt-get download of linux-image-amd64's kernel package and busybox-static failed (above: the end of apt's output)"
			return 1
		}
	fi
	for f in *.deb; do
		dpkg-deb -x "$f" "$tmp/root" || {
			log "guest OS: dpkg-deb -x $f failed"
			return 1
		}
	done
	kver=${kpkg#linux-image-}
	install -m 0644 "$tmp/root/boot/vmlinuz-$kver" "$stage/vmlinuz" &&
		install -m 0755 "$tmp/root/bin/busybox" "$stage/busybox" &&
		install -d -m 0755 "$stage/modules" || {
		log "guest OS: $kpkg has no /boot/vmlinuz-$kver, or busybox-static no /bin/busybox"
		return 1
	}
	for m in "${guest_os_modules[@]}"; do
		f=$(find "$tmp/root/lib/modules/$kver/kernel" -name "$m.ko" -print -quit)
		[[ -n $f ]] || {
			log "guest OS: $kpkg has no module $m.ko (compressed modules are not supported)"
			return 1
		}
		install -m 0644 "$f" "$stage/modules/$m.ko" || return 1
	done
	echo "$kpkg $(dpkg-deb -f "$tmp/deb/${kpkg}"_*.deb Version)" >"$stage/VERSION" || return 1
	chmod 0644 "$stage/VERSION" && chmod 0755 "$stage" || return 1
	rm -rf "$guest_os_dir" && mv -T "$stage" "$guest_os_dir" || {
		log "guest OS: renaming $stage to $guest_os_dir failed"
		return 1
	}
	log "guest OS: $(cat "$guest_os_dir/VERSION") and busybox in $guest_os_dir"
)

if [[ $(id -u) -ne 0 ]]; then
	[[ -S /var/run/libvirt/libvirt-sock ]] ||
		log "not root: libvirtd is not started; the lab runs on libvirt's test driver, in a libvirtd of its own"
	guest_os_complete ||
		log "not root: the lab's guests boot no OS until the kernel and busybox are in $guest_os_dir: $guest_os_fix"
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

if ! guest_os_complete; then
	if ((!root)); then
		log "CARETAKER_NO_INSTALL=1: the lab's guests boot no OS until the kernel and busybox are in $guest_os_dir: $guest_os_fix"
	elif ! fetch_guest_os; then
		log "fetching the guests' kernel and busybox into $guest_os_dir failed (above); fix apt (apt-get update, /etc/apt/sources.list) and run: $guest_os_fix"
		[[ $mode == test ]] && exit 1
		log "the lab's guests will boot no OS"
	fi
fi
