package kvm

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/digitalocean/go-libvirt"
)

// domainStats is what libvirt's bulk stats call (virConnectGetAllDomainStats)
// reports of one domain, as far as the collector uses it: parseStats reads
// it from the call's typed parameters. A group libvirt did not report is
// nil (State, Cpu, Balloon) or empty; a field it did not report has its
// Set false.
type domainStats struct {
	State   *statsState
	Cpu     *statsCPU
	Balloon *statsBalloon
	// Vcpu, Block and Net are the vCPUs, disks and interfaces libvirt
	// reported anything about, by their index in its report.
	Vcpu  []statsVcpu
	Block []statsBlock
	Net   []statsNet
}

// statsState is the group "state": state.state and state.reason.
type statsState struct {
	StateSet  bool
	State     libvirt.DomainState
	ReasonSet bool
	Reason    int
}

// statsCPU is the group "cpu": cpu.time, in nanoseconds.
type statsCPU struct {
	TimeSet bool
	Time    uint64
}

// statsBalloon is the group "balloon", sizes in KiB.
type statsBalloon struct {
	CurrentSet bool
	Current    uint64
	MaximumSet bool
	Maximum    uint64
	RssSet     bool
	Rss        uint64
}

// virVcpuState.
const (
	vcpuOffline = 0
	vcpuRunning = 1
	vcpuBlocked = 2
)

// statsVcpu is one vCPU of the group "vcpu": vcpu.<n>.state (virVcpuState,
// reported for an active domain's online vCPUs only), vcpu.<n>.time and
// vcpu.<n>.delay, in nanoseconds.
type statsVcpu struct {
	Index    uint
	StateSet bool
	State    int
	TimeSet  bool
	Time     uint64
	DelaySet bool
	Delay    uint64
}

// statsBlock is one disk of the group "block" (block.<n>.…), times in
// nanoseconds.
type statsBlock struct {
	Index      uint
	NameSet    bool
	Name       string
	RdBytesSet bool
	RdBytes    uint64
	WrBytesSet bool
	WrBytes    uint64
	RdReqsSet  bool
	RdReqs     uint64
	WrReqsSet  bool
	WrReqs     uint64
	RdTimesSet bool
	RdTimes    uint64
	WrTimesSet bool
	WrTimes    uint64
	ErrorsSet  bool
	Errors     uint64
}

// statsNet is one interface of the group "net" (net.<n>.…).
type statsNet struct {
	Index      uint
	NameSet    bool
	Name       string
	RxBytesSet bool
	RxBytes    uint64
	RxPktsSet  bool
	RxPkts     uint64
	RxErrsSet  bool
	RxErrs     uint64
	RxDropSet  bool
	RxDrop     uint64
	TxBytesSet bool
	TxBytes    uint64
	TxPktsSet  bool
	TxPkts     uint64
	TxErrsSet  bool
	TxErrs     uint64
	TxDropSet  bool
	TxDrop     uint64
}

// parseStats reads the typed parameters of one domain's record, as
// libvirtd sends them ("state.state", "vcpu.0.state", "block.1.rd.bytes",
// "net.0.name", …). What the collector does not use is skipped, and so is a
// parameter whose value is not of a type its field can hold (a negative
// counter, a number for a name): the field stays unset, as if libvirt had
// not reported it. Of a parameter given twice, the last that fits counts. Indices
// are libvirt's; the lists are in their order, whatever order the
// parameters came in, and hold only the indices some parameter named, so
// that no index, however large, costs more than its parameters.
func parseStats(params []libvirt.TypedParam) domainStats {
	var st domainStats
	var vcpus, blocks, nets map[uint]int // index → position in the list
	for i := range params {
		p := &params[i]
		group, rest, _ := strings.Cut(p.Field, ".")
		switch group {
		case "state":
			if st.State == nil {
				st.State = &statsState{}
			}
			switch rest {
			case "state":
				if v, ok := intValue(p.Value); ok && v >= math.MinInt32 && v <= math.MaxInt32 {
					st.State.State, st.State.StateSet = libvirt.DomainState(v), true
				}
			case "reason":
				if v, ok := intValue(p.Value); ok && v >= math.MinInt32 && v <= math.MaxInt32 {
					st.State.Reason, st.State.ReasonSet = int(v), true
				}
			}
		case "cpu":
			if st.Cpu == nil {
				st.Cpu = &statsCPU{}
			}
			if rest == "time" {
				setUint(&st.Cpu.Time, &st.Cpu.TimeSet, p.Value)
			}
		case "balloon":
			if st.Balloon == nil {
				st.Balloon = &statsBalloon{}
			}
			b := st.Balloon
			switch rest {
			case "current":
				setUint(&b.Current, &b.CurrentSet, p.Value)
			case "maximum":
				setUint(&b.Maximum, &b.MaximumSet, p.Value)
			case "rss":
				setUint(&b.Rss, &b.RssSet, p.Value)
			}
		case "vcpu":
			idx, field, ok := indexed(rest)
			if !ok {
				continue // vcpu.current, vcpu.maximum
			}
			v := &st.Vcpu[entry(&st.Vcpu, &vcpus, idx, func(i uint) statsVcpu { return statsVcpu{Index: i} })]
			switch field {
			case "state":
				if n, ok := intValue(p.Value); ok && n >= math.MinInt32 && n <= math.MaxInt32 {
					v.State, v.StateSet = int(n), true
				}
			case "time":
				setUint(&v.Time, &v.TimeSet, p.Value)
			case "delay":
				setUint(&v.Delay, &v.DelaySet, p.Value)
			}
		case "block":
			idx, field, ok := indexed(rest)
			if !ok {
				continue // block.count
			}
			b := &st.Block[entry(&st.Block, &blocks, idx, func(i uint) statsBlock { return statsBlock{Index: i} })]
			switch field {
			case "name":
				setString(&b.Name, &b.NameSet, p.Value)
			case "rd.bytes":
				setUint(&b.RdBytes, &b.RdBytesSet, p.Value)
			case "wr.bytes":
				setUint(&b.WrBytes, &b.WrBytesSet, p.Value)
			case "rd.reqs":
				setUint(&b.RdReqs, &b.RdReqsSet, p.Value)
			case "wr.reqs":
				setUint(&b.WrReqs, &b.WrReqsSet, p.Value)
			case "rd.times":
				setUint(&b.RdTimes, &b.RdTimesSet, p.Value)
			case "wr.times":
				setUint(&b.WrTimes, &b.WrTimesSet, p.Value)
			case "errors":
				setUint(&b.Errors, &b.ErrorsSet, p.Value)
			}
		case "net":
			idx, field, ok := indexed(rest)
			if !ok {
				continue // net.count
			}
			n := &st.Net[entry(&st.Net, &nets, idx, func(i uint) statsNet { return statsNet{Index: i} })]
			switch field {
			case "name":
				setString(&n.Name, &n.NameSet, p.Value)
			case "rx.bytes":
				setUint(&n.RxBytes, &n.RxBytesSet, p.Value)
			case "rx.pkts":
				setUint(&n.RxPkts, &n.RxPktsSet, p.Value)
			case "rx.errs":
				setUint(&n.RxErrs, &n.RxErrsSet, p.Value)
			case "rx.drop":
				setUint(&n.RxDrop, &n.RxDropSet, p.Value)
			case "tx.bytes":
				setUint(&n.TxBytes, &n.TxBytesSet, p.Value)
			case "tx.pkts":
				setUint(&n.TxPkts, &n.TxPktsSet, p.Value)
			case "tx.errs":
				setUint(&n.TxErrs, &n.TxErrsSet, p.Value)
			case "tx.drop":
				setUint(&n.TxDrop, &n.TxDropSet, p.Value)
			}
		}
	}
	slices.SortFunc(st.Vcpu, func(a, b statsVcpu) int { return cmp.Compare(a.Index, b.Index) })
	slices.SortFunc(st.Block, func(a, b statsBlock) int { return cmp.Compare(a.Index, b.Index) })
	slices.SortFunc(st.Net, func(a, b statsNet) int { return cmp.Compare(a.Index, b.Index) })
	return st
}

// indexed splits "<n>.<field>" (of "block.<n>.<field>"); false when rest
// does not start with a decimal index and a dot.
func indexed(rest string) (idx uint, field string, ok bool) {
	n, field, found := strings.Cut(rest, ".")
	if !found || n == "" || field == "" {
		return 0, "", false
	}
	v, err := strconv.ParseUint(n, 10, 32)
	if err != nil {
		return 0, "", false
	}
	return uint(v), field, true
}

// entry returns the position in *list of the entry of index idx, adding
// one made by mk if there is none.
func entry[T any](list *[]T, pos *map[uint]int, idx uint, mk func(uint) T) int {
	if *pos == nil {
		*pos = map[uint]int{}
	}
	if i, ok := (*pos)[idx]; ok {
		return i
	}
	*list = append(*list, mk(idx))
	(*pos)[idx] = len(*list) - 1
	return len(*list) - 1
}

// intValue returns an integer parameter's value (libvirt's int, uint,
// llong, ullong, boolean); false for any other type, and for an ullong
// beyond int64.
func intValue(v libvirt.TypedParamValue) (int64, bool) {
	switch x := v.I.(type) {
	case int32:
		return int64(x), true
	case uint32:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		if x > math.MaxInt64 {
			return 0, false
		}
		return int64(x), true
	}
	return 0, false
}

// setUint sets a counter or size from an unsigned parameter, or from a
// signed one that is not negative.
func setUint(dst *uint64, set *bool, v libvirt.TypedParamValue) {
	switch x := v.I.(type) {
	case uint64:
		*dst, *set = x, true
	case uint32:
		*dst, *set = uint64(x), true
	case int64:
		if x >= 0 {
			*dst, *set = uint64(x), true
		}
	case int32:
		if x >= 0 {
			*dst, *set = uint64(x), true
		}
	}
}

func setString(dst *string, set *bool, v libvirt.TypedParamValue) {
	if s, ok := v.I.(string); ok {
		*dst, *set = s, true
	}
}
