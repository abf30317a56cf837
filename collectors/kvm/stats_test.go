package kvm

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/digitalocean/go-libvirt"
)

// Typed parameters as libvirtd sends them, by libvirt's type.
func pInt(name string, v int32) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueInt(v)}
}

func pUint(name string, v uint32) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueUint(v)}
}

func pLlong(name string, v int64) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueLlong(v)}
}

func pUllong(name string, v uint64) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueUllong(v)}
}

func pString(name, v string) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueString(v)}
}

func pDouble(name string, v float64) libvirt.TypedParam {
	return libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueDouble(v)}
}

func TestParseStats(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params []libvirt.TypedParam
		want   domainStats
	}{
		{
			name: "nothing",
			want: domainStats{},
		},
		{
			// What libvirtd's QEMU driver sends for a running guest
			// (virsh domstats), in its order and types.
			name: "running QEMU guest",
			params: []libvirt.TypedParam{
				pInt("state.state", 1), pInt("state.reason", 1),
				pUllong("cpu.time", 228759000), pUllong("cpu.user", 100), pUllong("cpu.system", 50),
				pUllong("balloon.current", 65536), pUllong("balloon.maximum", 131072), pUllong("balloon.rss", 30000),
				pUint("vcpu.current", 2), pUint("vcpu.maximum", 4),
				pInt("vcpu.0.state", 1), pUllong("vcpu.0.time", 200000000), pUllong("vcpu.0.wait", 0), pUllong("vcpu.0.delay", 1500000000),
				pInt("vcpu.1.state", 2), pUllong("vcpu.1.time", 1), pUllong("vcpu.1.delay", 2),
				pUint("net.count", 1), pString("net.0.name", "vnet0"),
				pUllong("net.0.rx.bytes", 1), pUllong("net.0.rx.pkts", 2), pUllong("net.0.rx.errs", 3), pUllong("net.0.rx.drop", 4),
				pUllong("net.0.tx.bytes", 5), pUllong("net.0.tx.pkts", 6), pUllong("net.0.tx.errs", 7), pUllong("net.0.tx.drop", 8),
				pUint("block.count", 2),
				pString("block.0.name", "vda"), pString("block.0.path", "/var/lib/libvirt/images/a.qcow2"),
				pUllong("block.0.rd.reqs", 10), pUllong("block.0.rd.bytes", 11), pUllong("block.0.rd.times", 12),
				pUllong("block.0.wr.reqs", 13), pUllong("block.0.wr.bytes", 14), pUllong("block.0.wr.times", 15),
				pUllong("block.0.fl.reqs", 16), pUllong("block.0.allocation", 17), pUllong("block.0.capacity", 18),
				pString("block.1.name", "sda"), pLlong("block.1.errors", 3),
			},
			want: domainStats{
				State:   &statsState{StateSet: true, State: libvirt.DomainRunning, ReasonSet: true, Reason: 1},
				Cpu:     &statsCPU{TimeSet: true, Time: 228759000},
				Balloon: &statsBalloon{CurrentSet: true, Current: 65536, MaximumSet: true, Maximum: 131072, RssSet: true, Rss: 30000},
				Vcpu: []statsVcpu{
					{Index: 0, StateSet: true, State: vcpuRunning, TimeSet: true, Time: 200000000, DelaySet: true, Delay: 1500000000},
					{Index: 1, StateSet: true, State: vcpuBlocked, TimeSet: true, Time: 1, DelaySet: true, Delay: 2},
				},
				Block: []statsBlock{
					{Index: 0, NameSet: true, Name: "vda", RdReqsSet: true, RdReqs: 10, RdBytesSet: true, RdBytes: 11, RdTimesSet: true, RdTimes: 12,
						WrReqsSet: true, WrReqs: 13, WrBytesSet: true, WrBytes: 14, WrTimesSet: true, WrTimes: 15},
					{Index: 1, NameSet: true, Name: "sda", ErrorsSet: true, Errors: 3},
				},
				Net: []statsNet{{Index: 0, NameSet: true, Name: "vnet0",
					RxBytesSet: true, RxBytes: 1, RxPktsSet: true, RxPkts: 2, RxErrsSet: true, RxErrs: 3, RxDropSet: true, RxDrop: 4,
					TxBytesSet: true, TxBytes: 5, TxPktsSet: true, TxPkts: 6, TxErrsSet: true, TxErrs: 7, TxDropSet: true, TxDrop: 8}},
			},
		},
		{
			// A shut-off domain: state and balloon, vCPU counts
			// without per-vCPU state, no devices.
			name: "shut off",
			params: []libvirt.TypedParam{
				pInt("state.state", 5), pInt("state.reason", 3),
				pUllong("balloon.current", 65536), pUllong("balloon.maximum", 131072),
				pUint("vcpu.current", 2), pUint("vcpu.maximum", 2),
				pUint("net.count", 0), pUint("block.count", 0),
			},
			want: domainStats{
				State:   &statsState{StateSet: true, State: libvirt.DomainShutoff, ReasonSet: true, Reason: 3},
				Balloon: &statsBalloon{CurrentSet: true, Current: 65536, MaximumSet: true, Maximum: 131072},
			},
		},
		{
			name: "devices out of order and sparse indices",
			params: []libvirt.TypedParam{
				pString("block.7.name", "vdh"), pString("block.2.name", "vdc"), pUllong("block.7.rd.bytes", 1),
				pString("net.4294967295.name", "vnet9"), pString("net.3.name", "vnet3"),
				pInt("vcpu.63.state", 0), pInt("vcpu.0.state", 1),
			},
			want: domainStats{
				Vcpu:  []statsVcpu{{Index: 0, StateSet: true, State: vcpuRunning}, {Index: 63, StateSet: true, State: vcpuOffline}},
				Block: []statsBlock{{Index: 2, NameSet: true, Name: "vdc"}, {Index: 7, NameSet: true, Name: "vdh", RdBytesSet: true, RdBytes: 1}},
				Net:   []statsNet{{Index: 3, NameSet: true, Name: "vnet3"}, {Index: 4294967295, NameSet: true, Name: "vnet9"}},
			},
		},
		{
			// Types a field cannot hold leave it unset; the
			// group is there all the same.
			name: "values of the wrong type",
			params: []libvirt.TypedParam{
				pString("state.state", "running"), pUllong("state.reason", math.MaxUint64),
				pLlong("cpu.time", -1),
				pDouble("balloon.current", 1.5), pInt("balloon.maximum", 7), pUint("balloon.rss", 8),
				pUllong("block.0.name", 1), pString("block.0.rd.bytes", "1"), pInt("block.0.wr.bytes", -5),
				pUllong("vcpu.0.state", 1<<40),
			},
			want: domainStats{
				State:   &statsState{},
				Cpu:     &statsCPU{},
				Balloon: &statsBalloon{MaximumSet: true, Maximum: 7, RssSet: true, Rss: 8},
				Vcpu:    []statsVcpu{{Index: 0}},
				Block:   []statsBlock{{Index: 0}},
			},
		},
		{
			name: "given twice: the last that fits",
			params: []libvirt.TypedParam{
				pInt("state.state", 1), pInt("state.state", 3), pString("state.state", "x"),
				pString("net.0.name", "a"), pString("net.0.name", "b"),
			},
			want: domainStats{
				State: &statsState{StateSet: true, State: libvirt.DomainPaused},
				Net:   []statsNet{{Index: 0, NameSet: true, Name: "b"}},
			},
		},
		{
			name: "names that are not libvirt's",
			params: []libvirt.TypedParam{
				pString("block.x.name", "a"), pString("block..name", "b"), pString("block.0.", "c"), pString("block.0", "d"),
				pString("block.-1.name", "e"), pString("block.+1.name", "f"), pString("block.4294967296.name", "g"),
				pInt("state", 1), pInt("", 1), pInt("perf.cmt", 1), pInt("statex.state", 1),
			},
			want: domainStats{State: &statsState{}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseStats(tc.params)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseStats:\n got %s\nwant %s", dumpStats(got), dumpStats(tc.want))
			}
		})
	}
}

func dumpStats(st domainStats) string {
	var b strings.Builder
	if st.State != nil {
		fmt.Fprintf(&b, "state %+v ", *st.State)
	}
	if st.Cpu != nil {
		fmt.Fprintf(&b, "cpu %+v ", *st.Cpu)
	}
	if st.Balloon != nil {
		fmt.Fprintf(&b, "balloon %+v ", *st.Balloon)
	}
	fmt.Fprintf(&b, "vcpu %+v block %+v net %+v", st.Vcpu, st.Block, st.Net)
	return b.String()
}

// fuzzParams reads typed parameters from lines "name=t:value", t being
// libvirt's type: i int, u uint, l llong, L ullong, d double, b boolean,
// s string. Lines that do not parse are skipped.
func fuzzParams(s string) []libvirt.TypedParam {
	var params []libvirt.TypedParam
	for line := range strings.SplitSeq(s, "\n") {
		name, value, ok := strings.Cut(line, "=")
		if !ok || len(value) < 2 || value[1] != ':' {
			continue
		}
		v := value[2:]
		switch value[0] {
		case 'i':
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				params = append(params, pInt(name, int32(n)))
			}
		case 'u':
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				params = append(params, pUint(name, uint32(n)))
			}
		case 'l':
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				params = append(params, pLlong(name, n))
			}
		case 'L':
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				params = append(params, pUllong(name, n))
			}
		case 'd':
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				params = append(params, pDouble(name, f))
			}
		case 'b':
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				params = append(params, libvirt.TypedParam{Field: name, Value: *libvirt.NewTypedParamValueBoolean(int32(n))})
			}
		case 's':
			params = append(params, pString(name, v))
		}
	}
	return params
}

// FuzzParseStats feeds parseStats what libvirtd might send, and checks its
// result against a plain reading of the parameters by name: every field
// parseStats sets is the last parameter of its name whose value fits the
// field, every such parameter sets its field, the lists are in index
// order without duplicates, and hold only indices some parameter named.
func FuzzParseStats(f *testing.F) {
	f.Add("state.state=i:1\nstate.reason=i:1\ncpu.time=L:228759000\nballoon.current=L:65536\nballoon.maximum=L:131072\nballoon.rss=L:30000\n" +
		"vcpu.current=u:2\nvcpu.maximum=u:2\nvcpu.0.state=i:1\nvcpu.0.time=L:5\nvcpu.0.delay=L:7\nvcpu.1.state=i:0\n" +
		"net.count=u:1\nnet.0.name=s:vnet0\nnet.0.rx.bytes=L:1\nnet.0.tx.drop=L:2\n" +
		"block.count=u:2\nblock.0.name=s:vda\nblock.0.rd.bytes=L:3\nblock.0.wr.times=L:4\nblock.1.name=s:vdb\nblock.1.errors=l:1\n")
	f.Add("state.state=s:x\nblock.01.name=s:a\nblock.1.name=s:b\nnet.4294967295.rx.bytes=l:-1\nvcpu.9.state=L:18446744073709551615\nballoon.rss=d:1.5\n")
	f.Add("block.0.name=s:vda\nblock.0.name=L:1\nstate.reason=i:-2147483648\n")
	f.Fuzz(func(t *testing.T, in string) {
		params := fuzzParams(in)
		got := parseStats(params)

		// want: field name (with its index as libvirt would print
		// it) → the last value that fits.
		want := map[string]any{}
		indices := map[string]map[uint]bool{"vcpu": {}, "block": {}, "net": {}}
		groups := map[string]bool{}
		for _, p := range params {
			group, rest, _ := strings.Cut(p.Field, ".")
			groups[group] = true
			name := p.Field
			if list, ok := indices[group]; ok {
				n, field, ok := strings.Cut(rest, ".")
				idx, err := strconv.ParseUint(n, 10, 32)
				if !ok || field == "" || err != nil {
					continue
				}
				list[uint(idx)] = true
				name = fmt.Sprintf("%s.%d.%s", group, idx, field)
			}
			if v, ok := fits(name, p.Value.I); ok {
				want[name] = v
			}
		}

		check := func(name string, set bool, v any) {
			w, ok := want[name]
			if set != ok || ok && w != v {
				t.Errorf("%s: parsed %v (set %v), want %v (set %v)", name, v, set, w, ok)
			}
		}
		if (got.State != nil) != groups["state"] || (got.Cpu != nil) != groups["cpu"] || (got.Balloon != nil) != groups["balloon"] {
			t.Errorf("groups: state %v cpu %v balloon %v, params name %v", got.State != nil, got.Cpu != nil, got.Balloon != nil, groups)
		}
		if s := got.State; s != nil {
			check("state.state", s.StateSet, int64(s.State))
			check("state.reason", s.ReasonSet, int64(s.Reason))
		}
		if c := got.Cpu; c != nil {
			check("cpu.time", c.TimeSet, c.Time)
		}
		if b := got.Balloon; b != nil {
			check("balloon.current", b.CurrentSet, b.Current)
			check("balloon.maximum", b.MaximumSet, b.Maximum)
			check("balloon.rss", b.RssSet, b.Rss)
		}
		var vi, bi, ni []uint
		for _, v := range got.Vcpu {
			vi = append(vi, v.Index)
			n := func(f string) string { return fmt.Sprintf("vcpu.%d.%s", v.Index, f) }
			check(n("state"), v.StateSet, int64(v.State))
			check(n("time"), v.TimeSet, v.Time)
			check(n("delay"), v.DelaySet, v.Delay)
		}
		for _, b := range got.Block {
			bi = append(bi, b.Index)
			n := func(f string) string { return fmt.Sprintf("block.%d.%s", b.Index, f) }
			check(n("name"), b.NameSet, b.Name)
			check(n("rd.bytes"), b.RdBytesSet, b.RdBytes)
			check(n("wr.bytes"), b.WrBytesSet, b.WrBytes)
			check(n("rd.reqs"), b.RdReqsSet, b.RdReqs)
			check(n("wr.reqs"), b.WrReqsSet, b.WrReqs)
			check(n("rd.times"), b.RdTimesSet, b.RdTimes)
			check(n("wr.times"), b.WrTimesSet, b.WrTimes)
			check(n("errors"), b.ErrorsSet, b.Errors)
		}
		for _, x := range got.Net {
			ni = append(ni, x.Index)
			n := func(f string) string { return fmt.Sprintf("net.%d.%s", x.Index, f) }
			check(n("name"), x.NameSet, x.Name)
			check(n("rx.bytes"), x.RxBytesSet, x.RxBytes)
			check(n("rx.pkts"), x.RxPktsSet, x.RxPkts)
			check(n("rx.errs"), x.RxErrsSet, x.RxErrs)
			check(n("rx.drop"), x.RxDropSet, x.RxDrop)
			check(n("tx.bytes"), x.TxBytesSet, x.TxBytes)
			check(n("tx.pkts"), x.TxPktsSet, x.TxPkts)
			check(n("tx.errs"), x.TxErrsSet, x.TxErrs)
			check(n("tx.drop"), x.TxDropSet, x.TxDrop)
		}
		for group, got := range map[string][]uint{"vcpu": vi, "block": bi, "net": ni} {
			wantIdx := slices.Sorted(func(yield func(uint) bool) {
				for i := range indices[group] {
					if !yield(i) {
						return
					}
				}
			})
			if !slices.Equal(got, wantIdx) {
				t.Errorf("%s indices %v, want %v (sorted, once each)", group, got, wantIdx)
			}
		}
	})
}

// fits returns v as the field of that name holds it (int64 for state
// fields, uint64 for counters, string for names), false when the field
// cannot hold it or parseStats knows no such field.
func fits(name string, v any) (any, bool) {
	if !known(name) {
		return nil, false
	}
	field := name[strings.LastIndexByte(name, '.')+1:]
	switch {
	case strings.HasSuffix(name, ".name"):
		s, ok := v.(string)
		return s, ok
	case name == "state.state" || name == "state.reason" || strings.HasPrefix(name, "vcpu.") && field == "state":
		var n int64
		switch x := v.(type) {
		case int32:
			n = int64(x)
		case uint32:
			n = int64(x)
		case int64:
			n = x
		case uint64:
			if x > math.MaxInt64 {
				return nil, false
			}
			n = int64(x)
		default:
			return nil, false
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return nil, false
		}
		return n, true
	default:
		switch x := v.(type) {
		case uint64:
			return x, true
		case uint32:
			return uint64(x), true
		case int64:
			return uint64(x), x >= 0
		case int32:
			return uint64(x), x >= 0
		}
		return nil, false
	}
}

// known says whether parseStats reads the field of that name (indices as
// libvirt prints them).
func known(name string) bool {
	switch name {
	case "state.state", "state.reason", "cpu.time", "balloon.current", "balloon.maximum", "balloon.rss":
		return true
	}
	group, rest, _ := strings.Cut(name, ".")
	_, field, _ := strings.Cut(rest, ".")
	switch group {
	case "vcpu":
		return field == "state" || field == "time" || field == "delay"
	case "block":
		return slices.Contains([]string{"name", "rd.bytes", "wr.bytes", "rd.reqs", "wr.reqs", "rd.times", "wr.times", "errors"}, field)
	case "net":
		return slices.Contains([]string{"name", "rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"}, field)
	}
	return false
}
