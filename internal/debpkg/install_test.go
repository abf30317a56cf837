package debpkg

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/agent"
	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
)

const testVersion = "debpkg-test"

// TestInstall installs the three packages on this machine with dpkg (no
// systemd running: the maintainer scripts must do without), checks what
// they made, runs the installed agent against a private libvirtd and the
// installed server, as the caretaker user, against that agent with its data
// in /var/lib/caretaker, where it records a pause in its journal; upgrades
// them in place to a newer version (tokens, a changed conffile and the
// journal survive) and runs the new server on the old one's data: the
// pause is still there. Then it purges everything.
func TestInstall(t *testing.T) {
	needs.Root(t, "the test installs Debian packages")
	dpkg := needs.Program(t, "dpkg")
	needs.Programs(t, "dpkg-query", "adduser", "deluser")
	for _, p := range []string{Agent, Server, Runbook} {
		if out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", p).Output(); err == nil && string(out) != "not-installed" && len(out) > 0 {
			t.Fatalf("%s is already on this machine (%s): the test installs and purges it, so it will not run here; purge it first (dpkg --purge %s)", p, out, p)
		}
	}
	if _, err := user.Lookup("caretaker"); err == nil {
		t.Fatal("a caretaker user exists though no caretaker package is installed: the test's purge would delete it; remove it first")
	}
	for _, p := range []string{"/etc/caretaker", "/var/lib/caretaker", "/var/lib/caretaker-agent"} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists though no caretaker package is installed: the test's purge would delete it", p)
		}
	}
	daemon := testdaemon.PrivateLibvirtd(t)

	root, _ := filepath.Abs(filepath.Join("..", ".."))
	work := t.TempDir()
	bin := filepath.Join(work, "bin")
	buildBinaries(t, root, bin)
	v1, v2 := "0.0.0~git20260101000000.aaaaaaa", "0.0.0~git20260102000000.bbbbbbb"
	debs := map[string][]string{}
	for _, v := range []string{v1, v2} {
		paths, err := Build{Version: v, Bin: bin, Root: root, Out: filepath.Join(work, v)}.Write()
		if err != nil {
			t.Fatal(err)
		}
		debs[v] = paths
	}

	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		// Whatever happened, leave the machine as it was.
		exec.Command(dpkg, "--purge", Runbook, Server, Agent).Run()
	})
	run(dpkg, append([]string{"-i"}, debs[v1]...)...)

	// What the packages made.
	u, err := user.Lookup("caretaker")
	if err != nil {
		t.Fatalf("no caretaker user after installation: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid >= 1000 || u.HomeDir != "/var/lib/caretaker" {
		t.Errorf("caretaker user %+v: want a system user with home /var/lib/caretaker", u)
	}
	if g, err := user.LookupGroup("caretaker"); err != nil || g.Gid != u.Gid {
		t.Errorf("caretaker group: %v %v, want the user's primary group", g, err)
	}
	checkFile := func(path string, mode os.FileMode, uid, gid int) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%v", err)
			return
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: mode %#o %d:%d, want %#o %d:%d", path, fi.Mode().Perm(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	checkFile("/usr/bin/caretaker", 0o755, 0, 0)
	checkFile("/usr/bin/caretaker-agent", 0o755, 0, 0)
	checkFile("/usr/bin/runbook", 0o755, 0, 0)
	checkFile("/lib/systemd/system/caretaker-agent.service", 0o644, 0, 0)
	checkFile("/lib/systemd/system/caretaker-server.service", 0o644, 0, 0)
	checkFile("/etc/caretaker", 0o750, 0, gid)
	checkFile("/etc/caretaker/server.yml", 0o640, 0, gid)
	checkFile("/etc/caretaker/policy.yml", 0o640, 0, gid)
	checkFile("/etc/caretaker/agent.yml", 0o640, 0, gid)
	checkFile("/etc/caretaker/agent.token", 0o600, uid, gid)
	checkFile("/etc/caretaker/api.token", 0o600, uid, gid)
	checkFile("/var/lib/caretaker", 0o750, uid, gid)
	checkFile("/var/lib/caretaker-agent", 0o700, 0, 0)
	tokens := map[string]string{}
	for _, name := range []string{"agent.token", "api.token"} {
		b, err := os.ReadFile("/etc/caretaker/" + name)
		tok := strings.TrimSpace(string(b))
		if _, herr := hex.DecodeString(tok); err != nil || herr != nil || len(tok) != 64 {
			t.Errorf("%s: %q (%v): want 32 random bytes in hex", name, tok, err)
		}
		tokens[name] = tok
	}
	if tokens["agent.token"] == tokens["api.token"] {
		t.Error("agent and API tokens are the same")
	}
	conffiles := run("dpkg-query", "-W", "-f=${Conffiles}\n", Agent, Server)
	for _, f := range []string{"/etc/caretaker/agent.yml", "/etc/caretaker/server.yml", "/etc/caretaker/policy.yml"} {
		if !strings.Contains(conffiles, f+" ") {
			t.Errorf("%s is no conffile:\n%s", f, conffiles)
		}
	}
	// The installed configurations load as they are.
	if _, err := config.Load("/etc/caretaker/server.yml"); err != nil {
		t.Errorf("installed server.yml: %v", err)
	}
	if _, err := agent.LoadFile("/etc/caretaker/agent.yml"); err != nil {
		t.Errorf("installed agent.yml: %v", err)
	}
	if out := run("/usr/bin/caretaker", "version"); !strings.Contains(out, testVersion) {
		t.Errorf("caretaker version: %q", out)
	}

	// An upgrade in place keeps the tokens, the operator's change to a
	// conffile and the server's data.
	f, err := os.OpenFile("/etc/caretaker/server.yml", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "# changed by the operator")
	f.Close()
	// The installed binaries at work: the agent on the test driver of a
	// private libvirtd, the server as the caretaker user scraping it,
	// with its journal where the package put it. A pause is recorded in
	// the journal.
	// One agent address for both runs, as a host keeps its own: the
	// server's TSDB outlives the upgrade, and a second address would
	// show the guest twice.
	agentAddr := testdaemon.FreePort(t)
	pause := api.PauseRequest{Target: "host-a", Author: "debpkg-test", Comment: "kept across the upgrade", Duration: "1h"}
	runInstalled(t, daemon, agentAddr, tokens["api.token"], uid, gid, func(c *api.Client) error {
		_, err := c.Pause(context.Background(), pause)
		return err
	})
	journal, err := os.ReadFile("/var/lib/caretaker/journal.db")
	if err != nil {
		t.Fatalf("the installed server kept no journal in /var/lib/caretaker: %v", err)
	}
	run(dpkg, append([]string{"-i"}, debs[v2]...)...)
	for _, p := range []string{Agent, Server, Runbook} {
		if v := run("dpkg-query", "-W", "-f=${Version}", p); v != v2 {
			t.Errorf("%s %s after the upgrade, want %s", p, v, v2)
		}
	}
	for name, tok := range tokens {
		if b, _ := os.ReadFile("/etc/caretaker/" + name); strings.TrimSpace(string(b)) != tok {
			t.Errorf("%s changed in the upgrade", name)
		}
	}
	if b, _ := os.ReadFile("/etc/caretaker/server.yml"); !bytes.Contains(b, []byte("# changed by the operator")) {
		t.Error("the upgrade lost the change to server.yml")
	}
	if b, err := os.ReadFile("/var/lib/caretaker/journal.db"); err != nil || !bytes.Equal(b, journal) {
		t.Errorf("the upgrade changed or lost /var/lib/caretaker/journal.db: %v", err)
	}
	checkFile("/etc/caretaker", 0o750, 0, gid)
	checkFile("/etc/caretaker/server.yml", 0o640, 0, gid)

	// The upgraded server reads the journal the old one wrote.
	runInstalled(t, daemon, agentAddr, tokens["api.token"], uid, gid, func(c *api.Client) error {
		ps, err := c.Pauses(context.Background())
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.Target == pause.Target && p.Comment == pause.Comment {
				return nil
			}
		}
		return fmt.Errorf("the upgraded server's pauses are %+v: the pause the old one recorded is gone", ps)
	})

	run(dpkg, "--purge", Runbook, Server, Agent)
	for _, p := range []string{"/usr/bin/caretaker", "/usr/bin/caretaker-agent", "/usr/bin/runbook",
		"/lib/systemd/system/caretaker-agent.service", "/lib/systemd/system/caretaker-server.service",
		"/etc/caretaker", "/var/lib/caretaker", "/var/lib/caretaker-agent", "/usr/share/doc/caretaker-server"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is left after the purge", p)
		}
	}
	if _, err := user.Lookup("caretaker"); err == nil {
		t.Error("the caretaker user is left after the purge")
	}
	if _, err := user.LookupGroup("caretaker"); err == nil {
		t.Error("the caretaker group is left after the purge")
	}
}

// buildBinaries builds the three binaries into dir, with testVersion.
func buildBinaries(t *testing.T, root, dir string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, b := range [][2]string{{"caretaker", "./cmd/caretaker"}, {"caretaker-agent", "./cmd/caretaker-agent"}, {"runbook", "./cmd/runbook"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("go", "build", "-ldflags", "-X caretaker/internal/version.Version="+testVersion, "-o", filepath.Join(dir, b[0]), b[1])
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

const node = `<node>
  <domain type="test">
    <name>pkg-guest-1</name>
    <uuid>6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a00aa</uuid>
    <memory>65536</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
  </domain>
</node>
`

// runInstalled starts the installed agent on agentAddr and the server, with the server's
// data in /var/lib/caretaker, waits until the server sees the agent and its
// guest, then calls check with a client of the server's API and stops
// both.
func runInstalled(t *testing.T, daemon *testdaemon.Libvirtd, agentAddr, apiToken string, uid, gid int, check func(*api.Client) error) {
	t.Helper()
	// Not t.TempDir: the caretaker user must reach its files.
	dir, err := os.MkdirTemp("", "ctk-deb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	nodeFile := filepath.Join(dir, "node.xml")
	os.WriteFile(nodeFile, []byte(node), 0o644)
	const data = "/var/lib/caretaker"

	stopAgent := start(t, filepath.Join(dir, "agent.log"), nil, "/usr/bin/caretaker-agent",
		"--web.listen-address", agentAddr, "--libvirt.uri", daemon.URI(nodeFile),
		"--action.token-file", "/etc/caretaker/agent.token", "--config.file", "/etc/caretaker/agent.yml",
		"--state.dir", filepath.Join(dir, "agent-state"))

	cfg := filepath.Join(dir, "server.yml")
	os.WriteFile(cfg, fmt.Appendf(nil, `data_dir: %s
api: {token_file: /etc/caretaker/api.token}
agents: {token_file: /etc/caretaker/agent.token}
remediation: {policy_file: /etc/caretaker/policy.yml}
prometheus: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}
hosts:
  - {name: host-a, agent: %q}
`, data, agentAddr), 0o644)
	serverAddr := testdaemon.FreePort(t)
	stopServer := start(t, filepath.Join(dir, "server.log"), &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		"/usr/bin/caretaker", "server", "--config.file", cfg, "--web.listen-address", serverAddr)

	// Stopped before the purge: userdel refuses a user with processes.
	defer stopAgent()
	defer stopServer()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+serverAddr+"/api/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+apiToken)
		var st api.Status
		if resp, err := http.DefaultClient.Do(req); err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			last = fmt.Sprintf("%d %+v %v", resp.StatusCode, st, err)
			if st.Version != "" && st.Version != testVersion {
				t.Fatalf("server version %q, want %q", st.Version, testVersion)
			}
			if len(st.Hosts) == 1 && st.Hosts[0].AgentUp && st.Hosts[0].LibvirtUp && st.Hosts[0].Guests == 1 {
				if err := check(api.NewClient("http://"+serverAddr, apiToken, nil)); err != nil {
					t.Fatal(err)
				}
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the installed server never saw the installed agent with its guest; last status: %s", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// start runs an installed program, as cred's user when not nil, stopped
// at cleanup; its log is shown when the test failed.
func start(t *testing.T, logPath string, cred *syscall.Credential, name string, args ...string) (stop func()) {
	t.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			log.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				if len(b) > 4096 {
					b = b[len(b)-4096:]
				}
				t.Logf("%s log (tail):\n%s", filepath.Base(name), b)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
