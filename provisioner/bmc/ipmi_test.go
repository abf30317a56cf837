package bmc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"caretaker/internal/needs"
)

const (
	simUser = "admin"
	simPass = "ipmi-s3cret"
	// simReady bounds the wait for ipmi_sim to answer and for its
	// power-on timer after a cycle.
	simReady = 30 * time.Second
)

// chassisScript is ipmi_sim's chassis_control program: it appends every
// call to the record file and keeps power and boot device in files, so
// "get" answers what the last "set" asked for.
const chassisScript = `#!/bin/sh
dir=$(dirname "$0")
shift # the MC address
op=$1
shift
echo "$op $*" >> "$dir/record"
case $op in
get)
	for p in "$@"; do
		case $p in
		power) echo "power:$(cat "$dir/power")" ;;
		boot) echo "boot:$(cat "$dir/boot")" ;;
		*) echo "Invalid parameter: $p"; exit 1 ;;
		esac
	done ;;
set)
	while [ $# -ge 2 ]; do
		case $1 in
		power) echo "$2" > "$dir/power" ;;
		boot) echo "$2" > "$dir/boot" ;;
		esac
		shift 2
	done ;;
*) exit 1 ;;
esac
`

type ipmiSim struct {
	dir  string
	addr string // host:port
}

// freeUDPPort returns a loopback port no UDP socket is bound to just now.
func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startIPMISim runs OpenIPMI's ipmi_sim as a lanplus BMC on a free UDP
// port with the recording chassis-control script, the host powered off.
func startIPMISim(t testing.TB) *ipmiSim {
	t.Helper()
	bin := needs.Program(t, "ipmi_sim")
	dir := t.TempDir()
	port := freeUDPPort(t)
	files := map[string]string{
		"chassis": chassisScript,
		"power":   "0\n",
		"boot":    "default\n",
		"record":  "",
		"emu.cmds": "mc_setbmc 0x20\n" +
			"mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n" +
			"mc_enable 0x20\n",
		"lan.conf": fmt.Sprintf(`name "caretaker-test"
set_working_mc 0x20
startlan 1
  addr 127.0.0.1 %d
  priv_limit admin
  allowed_auths_callback none md2 md5 straight
  allowed_auths_user none md2 md5 straight
  allowed_auths_operator none md2 md5 straight
  allowed_auths_admin none md2 md5 straight
  guid a123456789abcdefa123456789abcdef
endlan
chassis_control "%s/chassis 0x20"
user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, port, dir, simUser, simPass),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "ipmi_sim.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "emu.cmds"), "-n", "-s", state)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ipmi_sim: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("ipmi_sim log:\n%s", b)
		}
	})

	sim := &ipmiSim{dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	// ipmi_sim offers no readiness signal: poll a real request.
	probe := sim.controller(t, time.Second, 0)
	deadline := time.Now().Add(simReady)
	for {
		_, err := probe.PowerStatus(context.Background())
		if err == nil {
			return sim
		}
		select {
		case werr := <-exited:
			exited <- werr
			b, _ := os.ReadFile(logPath)
			t.Fatalf("ipmi_sim exited: %v\n%s", werr, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipmi_sim at %s not answering within %s: %v", sim.addr, simReady, err)
		}
	}
}

func (s *ipmiSim) controller(t testing.TB, timeout time.Duration, retries int) Controller {
	t.Helper()
	c, err := New(Config{
		Type: TypeIPMI, Address: s.addr, Username: simUser,
		SecretsDir: secretsDir(t, simPass+"\n"), PasswordFile: "bmc.pass", Timeout: timeout, Retries: retries,
	}, discard())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sets returns the "set" calls the chassis script recorded.
func (s *ipmiSim) sets(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "record"))
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, l := range strings.Split(string(b), "\n") {
		if after, ok := strings.CutPrefix(l, "set "); ok {
			sets = append(sets, after)
		}
	}
	return sets
}

// awaitSets waits until the script recorded want after the first skip
// set calls; ipmi_sim powers a cycled host on from a timer a second later.
func (s *ipmiSim) awaitSets(t *testing.T, skip int, want []string) {
	t.Helper()
	deadline := time.Now().Add(simReady)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := s.sets(t)[skip:]
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("chassis script set %q, want %q", got, want)
		}
		<-tick.C
	}
}

// ipmitool runs ipmitool against the simulator.
func (s *ipmiSim) ipmitool(t *testing.T, args ...string) string {
	t.Helper()
	bin := needs.Program(t, "ipmitool")
	host, port, _ := net.SplitHostPort(s.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := []string{"-I", "lanplus", "-C", "3", "-H", host, "-p", port, "-U", simUser, "-f", writeSecret(t, simPass)}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestIPMISim(t *testing.T) {
	t.Parallel()
	sim := startIPMISim(t)
	// No retries: a resent command would show twice in the record.
	c := sim.controller(t, 10*time.Second, 0)
	ctx := context.Background()
	for _, step := range []struct {
		name     string
		op       func(Controller, context.Context) error
		wantSets []string
		want     PowerState
		ipmitool []string // command whose output must contain check
		check    string
	}{
		{name: "on", op: Controller.PowerOn, wantSets: []string{"power 1"}, want: PowerOn,
			ipmitool: []string{"chassis", "power", "status"}, check: "Chassis Power is on"},
		{name: "off", op: Controller.PowerOff, wantSets: []string{"power 0"}, want: PowerOff,
			ipmitool: []string{"chassis", "power", "status"}, check: "Chassis Power is off"},
		{name: "cycle when off powers on", op: Controller.PowerCycle, wantSets: []string{"power 1"}, want: PowerOn},
		{name: "cycle", op: Controller.PowerCycle, wantSets: []string{"power 0", "power 1"}, want: PowerOn},
		{name: "PXE once", op: Controller.SetPXEBootOnce, wantSets: []string{"boot pxe"}, want: PowerOn,
			ipmitool: []string{"chassis", "bootparam", "get", "5"}, check: "Boot Device Selector : Force PXE"},
	} {
		t.Run(step.name, func(t *testing.T) {
			before := len(sim.sets(t))
			if err := step.op(c, ctx); err != nil {
				t.Fatal(err)
			}
			sim.awaitSets(t, before, step.wantSets)
			got, err := c.PowerStatus(ctx)
			if err != nil || got != step.want {
				t.Fatalf("PowerStatus = %v, %v; want %v", got, err, step.want)
			}
			if step.ipmitool != nil {
				if out := sim.ipmitool(t, step.ipmitool...); !strings.Contains(out, step.check) {
					t.Fatalf("ipmitool %s:\n%s\nwant %q", strings.Join(step.ipmitool, " "), out, step.check)
				}
			}
		})
	}
}

func TestIPMIWrongPassword(t *testing.T) {
	t.Parallel()
	sim := startIPMISim(t)
	c, err := New(Config{
		Type: TypeIPMI, Address: sim.addr, Username: simUser,
		SecretsDir: secretsDir(t, "wrong-s3cret"), PasswordFile: "bmc.pass", Timeout: 2 * time.Second, Retries: 2,
	}, discard())
	if err != nil {
		t.Fatal(err)
	}
	err = c.PowerOn(context.Background())
	want := "ipmi " + sim.addr + `: power on: attempt 1 of 3: open session as "admin": BMC refused the credentials (check username and password_file): `
	if err == nil || !strings.HasPrefix(err.Error(), want) || errors.Is(err, ErrNoAnswer) ||
		strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("err = %v\nwant prefix: %s", err, want)
	}
	if sets := sim.sets(t); len(sets) != 0 {
		t.Fatalf("chassis script set %q with a wrong password", sets)
	}
}

// TestIPMINoAnswer: a BMC that does not answer is a clear error, whether
// nothing listens (the kernel refuses) or something listens and is silent.
func TestIPMINoAnswer(t *testing.T) {
	t.Parallel()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	for _, tc := range []struct {
		name, addr, why string
	}{
		{name: "nobody listens", addr: "127.0.0.1:" + strconv.Itoa(freeUDPPort(t)), why: "BMC did not answer: "},
		{name: "silent", addr: silent.LocalAddr().String(), why: "BMC did not answer within 100ms: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{
				Type: TypeIPMI, Address: tc.addr, Username: simUser,
				SecretsDir: secretsDir(t, simPass), PasswordFile: "bmc.pass", Timeout: 100 * time.Millisecond, Retries: 1,
			}, discard())
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.PowerStatus(context.Background())
			want := "ipmi " + tc.addr + ": power status: attempt 2 of 2: " + tc.why + `open session as "admin": `
			if !errors.Is(err, ErrNoAnswer) || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("err = %v\nwant prefix: %s", err, want)
			}
		})
	}
}

// TestPXEOnceFlags pins the boot flags parameter: valid, next boot only,
// device PXE (ipmi_sim passes only the device on to its script).
func TestPXEOnceFlags(t *testing.T) {
	t.Parallel()
	if got, want := pxeOnceFlags().Pack(), []byte{0x80, 0x04, 0, 0, 0}; !bytes.Equal(got, want) {
		t.Fatalf("boot flags % x, want % x", got, want)
	}
}

// BenchmarkIPMIPowerStatus measures one operation with its own session
// (setup, Get Chassis Status, close) against ipmi_sim.
func BenchmarkIPMIPowerStatus(b *testing.B) {
	c := startIPMISim(b).controller(b, 5*time.Second, 0)
	for b.Loop() {
		if _, err := c.PowerStatus(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
