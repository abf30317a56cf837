package host

import "github.com/prometheus/client_golang/prometheus"

// descs are the descriptors of every metric the collector sends.
type descs struct {
	cpuSeconds, cpus, bootTime *prometheus.Desc
	load1, load5, load15       *prometheus.Desc

	memTotal, memAvailable, memFree, memBuffers, memCached *prometheus.Desc
	swapTotal, swapFree                                    *prometheus.Desc
	hugepages, hugepagesFree, hugepageSize, anonHugepages  *prometheus.Desc

	ksmRun, ksmShared, ksmSharing, ksmFullScans *prometheus.Desc

	pressureSome, pressureFull *prometheus.Desc

	diskReads, diskWrites, diskReadBytes, diskWrittenBytes *prometheus.Desc
	diskReadTime, diskWriteTime, diskIOTime, diskIONow     *prometheus.Desc

	fsInfo, fsSize, fsFree, fsAvail, fsFiles, fsFilesFree *prometheus.Desc
	fsReadonly, fsStatTimeout, fsStatError                *prometheus.Desc

	netRxBytes, netRxPackets, netRxErrors, netRxDrops *prometheus.Desc
	netTxBytes, netTxPackets, netTxErrors, netTxDrops *prometheus.Desc

	kvmDevicePresent, kvmRequired, libvirtdUp                 *prometheus.Desc
	guestVCPUs, guestMemory, vcpuOvercommit, memoryOvercommit *prometheus.Desc
}

func newDescs() descs {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return descs{
		cpuSeconds: desc("cpu_seconds_total",
			"Time each online CPU spent in each mode, in seconds, from /proc/stat. guest and guest_nice (running vCPUs of guests) are also counted in user and nice.",
			"cpu", "mode"),
		cpus:     desc("cpus", "Number of online CPUs."),
		bootTime: desc("boot_time_seconds", "When the host booted, in seconds since the Unix epoch."),

		load1:  desc("load1", "Load average over 1 minute."),
		load5:  desc("load5", "Load average over 5 minutes."),
		load15: desc("load15", "Load average over 15 minutes."),

		memTotal:      desc("memory_total_bytes", "Usable RAM (MemTotal), in bytes."),
		memAvailable:  desc("memory_available_bytes", "Memory available for new work without swapping, as the kernel estimates it (MemAvailable), in bytes."),
		memFree:       desc("memory_free_bytes", "Memory not used at all (MemFree), in bytes."),
		memBuffers:    desc("memory_buffers_bytes", "Memory in block device buffers (Buffers), in bytes."),
		memCached:     desc("memory_cached_bytes", "Memory in the page cache (Cached), in bytes."),
		swapTotal:     desc("memory_swap_total_bytes", "Swap space (SwapTotal), in bytes."),
		swapFree:      desc("memory_swap_free_bytes", "Unused swap space (SwapFree), in bytes."),
		hugepages:     desc("memory_hugepages", "Number of pages in the persistent huge page pool (HugePages_Total)."),
		hugepagesFree: desc("memory_hugepages_free", "Number of pages of the huge page pool not yet allocated (HugePages_Free)."),
		hugepageSize:  desc("memory_hugepage_size_bytes", "Size of the default huge pages (Hugepagesize), in bytes."),
		anonHugepages: desc("memory_anon_hugepages_bytes", "Memory in transparent huge pages of anonymous mappings (AnonHugePages), in bytes."),

		ksmRun:       desc("ksm_run", "State of kernel samepage merging, /sys/kernel/mm/ksm/run: 0 stopped, 1 running, 2 unmerging all pages."),
		ksmShared:    desc("ksm_pages_shared_bytes", "Memory in the pages KSM keeps to share (pages_shared), in bytes."),
		ksmSharing:   desc("ksm_pages_sharing_bytes", "Memory KSM saves: mappings of shared pages beyond the first (pages_sharing), in bytes."),
		ksmFullScans: desc("ksm_full_scans_total", "Number of times KSM scanned all mergeable memory."),

		pressureSome: desc("pressure_some_stalled_seconds_total",
			"Time in which at least one task was stalled waiting for the resource (the some line of /proc/pressure/<resource>), in seconds.",
			"resource"),
		pressureFull: desc("pressure_full_stalled_seconds_total",
			"Time in which all non-idle tasks were stalled waiting for the resource at once (the full line of /proc/pressure/<resource>), in seconds.",
			"resource"),

		diskReads:        desc("disk_reads_completed_total", "Number of reads the block device completed.", "device"),
		diskWrites:       desc("disk_writes_completed_total", "Number of writes the block device completed.", "device"),
		diskReadBytes:    desc("disk_read_bytes_total", "Bytes read from the block device.", "device"),
		diskWrittenBytes: desc("disk_written_bytes_total", "Bytes written to the block device.", "device"),
		diskReadTime:     desc("disk_read_time_seconds_total", "Time all reads from the block device took, summed over the reads, in seconds.", "device"),
		diskWriteTime:    desc("disk_write_time_seconds_total", "Time all writes to the block device took, summed over the writes, in seconds.", "device"),
		diskIOTime:       desc("disk_io_time_seconds_total", "Time during which the block device had I/O in flight, in seconds.", "device"),
		diskIONow:        desc("disk_io_now", "Number of I/Os in flight on the block device.", "device"),

		fsInfo: desc("filesystem_info",
			"The device and type of the filesystem mounted at mountpoint; always 1.",
			"mountpoint", "device", "fstype"),
		fsSize:      desc("filesystem_size_bytes", "Size of the filesystem, in bytes.", "mountpoint"),
		fsFree:      desc("filesystem_free_bytes", "Free space of the filesystem, including the space reserved for root, in bytes.", "mountpoint"),
		fsAvail:     desc("filesystem_avail_bytes", "Space of the filesystem available to unprivileged users, in bytes.", "mountpoint"),
		fsFiles:     desc("filesystem_files", "Number of inodes of the filesystem.", "mountpoint"),
		fsFilesFree: desc("filesystem_files_free", "Number of free inodes of the filesystem.", "mountpoint"),
		fsReadonly:  desc("filesystem_readonly", "Whether the filesystem is mounted read-only (1) or not (0).", "mountpoint"),
		fsStatTimeout: desc("filesystem_stat_timeout",
			"Whether statfs of the mount point did not return within the filesystem timeout (1), this scrape or an earlier one still waiting, or did (0). Its size metrics are left out while it hangs.",
			"mountpoint"),
		fsStatError: desc("filesystem_stat_error",
			"Whether statfs of the mount point returned an error (1) or not (0). Its size metrics are left out then.",
			"mountpoint"),

		netRxBytes:   desc("network_receive_bytes_total", "Bytes received by the network device.", "device"),
		netRxPackets: desc("network_receive_packets_total", "Packets received by the network device.", "device"),
		netRxErrors:  desc("network_receive_errors_total", "Receive errors the network device counted.", "device"),
		netRxDrops:   desc("network_receive_drops_total", "Received packets the network device dropped.", "device"),
		netTxBytes:   desc("network_transmit_bytes_total", "Bytes transmitted by the network device.", "device"),
		netTxPackets: desc("network_transmit_packets_total", "Packets transmitted by the network device.", "device"),
		netTxErrors:  desc("network_transmit_errors_total", "Transmit errors the network device counted.", "device"),
		netTxDrops:   desc("network_transmit_drops_total", "Packets to transmit the network device dropped.", "device"),

		kvmDevicePresent: desc("kvm_device_present", "Whether the KVM device (/dev/kvm) exists and is a character device (1) or not (0)."),
		kvmRequired: desc("kvm_required",
			"Whether this host's guests need the KVM device (1), or run under TCG (agent flag --guests.domain-type qemu) so that no /dev/kvm is expected (0)."),
		libvirtdUp:  desc("libvirtd_up", "Whether libvirtd answered a ping within the scrape (1) or not (0)."),
		guestVCPUs:  desc("guest_vcpus", "Number of vCPUs given to the running guests."),
		guestMemory: desc("guest_memory_bytes", "Memory given to the running guests, in bytes."),
		vcpuOvercommit: desc("vcpu_overcommit_ratio",
			"vCPUs given to the running guests per online host CPU; above 1 the host's CPUs are overcommitted."),
		memoryOvercommit: desc("memory_overcommit_ratio",
			"Memory given to the running guests per byte of host RAM (MemTotal); above 1 the host's memory is overcommitted."),
	}
}
