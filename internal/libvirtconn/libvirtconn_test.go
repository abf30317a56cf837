package libvirtconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
)

const adminSocket = "/var/run/libvirt/libvirt-admin-sock"

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want Target
	}{
		{"qemu:///system", Target{DefaultSocket, "qemu:///system"}},
		{"test:///default", Target{DefaultSocket, "test:///default"}},
		{"test:///tmp/node500.xml", Target{DefaultSocket, "test:///tmp/node500.xml"}},
		{"test+unix:///tmp/node.xml", Target{DefaultSocket, "test:///tmp/node.xml"}},
		{"test+unix:///tmp/node.xml?socket=/tmp/d/libvirt-sock", Target{"/tmp/d/libvirt-sock", "test:///tmp/node.xml"}},
		{"qemu+unix:///system?socket=/run/other-sock&mode=legacy", Target{"/run/other-sock", "qemu:///system"}},
		{"qemu+unix:///system?name=qemu:///session", Target{DefaultSocket, "qemu:///session"}},
		{"qemu:///session", Target{DefaultSocket, "qemu:///session"}},
		{"test://", Target{DefaultSocket, "test:///"}},
		{"test:///dir%20with%20space/node.xml", Target{DefaultSocket, "test:///dir%20with%20space/node.xml"}},
	} {
		got, err := ParseURI(tc.uri)
		if err != nil || got != tc.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tc.uri, got, err, tc.want)
		}
	}
	for _, uri := range []string{
		"",
		"qemu+tcp://host.example/system",
		"qemu+tls://host.example/system",
		"qemu+ssh://root@host.example/system",
		"qemu+libssh2://host.example/system",
		"qemu+ext:///system?command=/bin/true",
		"qemu://host.example/system", // a host means TLS to libvirt
		"qemu:system",
		"/var/run/libvirt/libvirt-sock",
	} {
		_, err := ParseURI(uri)
		if err == nil {
			t.Errorf("ParseURI(%q) succeeded, want an error", uri)
			continue
		}
		if uri != "" && !strings.Contains(err.Error(), uri) {
			t.Errorf("ParseURI(%q): error %q does not name the URI", uri, err)
		}
		t.Logf("%q: %v", uri, err)
	}
	_, err := ParseURI("qemu+ssh://root@host.example/system")
	if !strings.Contains(err.Error(), "qemu:///system") || !strings.Contains(err.Error(), "?socket=") {
		t.Errorf("error for a remote URI does not say what is supported: %v", err)
	}
}

func TestRemoteURIRefused(t *testing.T) {
	c := New("qemu+tcp://host.example/system", testLogger(t))
	t.Cleanup(func() { c.Close() })
	_, err := c.Get()
	if err == nil || !strings.Contains(err.Error(), "only the local libvirtd") {
		t.Fatalf("Get on a remote URI: %v, want the error naming what is supported", err)
	}
	err = c.Call(t.Context(), "ping", func(*libvirt.Libvirt) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "qemu+tcp://host.example/system") {
		t.Fatalf("Call on a remote URI: %v, want the error naming the URI", err)
	}
}

func TestUUID(t *testing.T) {
	const s = "6695eb01-f6a4-8304-79aa-97f2502e193f"
	u, err := ParseUUID(strings.ToUpper(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := UUIDString(u); got != s {
		t.Errorf("UUIDString(ParseUUID(%q)) = %q", s, got)
	}
	if u2, err := ParseUUID(strings.ReplaceAll(s, "-", "")); err != nil || u2 != u {
		t.Errorf("ParseUUID without dashes = %v, %v; want %v", u2, err, u)
	}
	for _, bad := range []string{"", "6695eb01", s + "0", "6695eb01-f6a4-8304-79aa-97f2502e193g", "6695eb01f-6a4-8304-79aa-97f2502e193f"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) succeeded", bad)
		}
	}
}

func TestErrors(t *testing.T) {
	err := fmt.Errorf("look up: %w", libvirt.Error{Code: uint32(libvirt.ErrNoDomain), Message: "Domain not found"})
	if !IsCode(err, libvirt.ErrNoDomain) || IsCode(err, libvirt.ErrInvalidArg) || IsCode(errors.New("x"), libvirt.ErrNoDomain) {
		t.Errorf("IsCode wrong for %v", err)
	}
	if got := Message(err); got != "Domain not found" {
		t.Errorf("Message = %q", got)
	}
	if got := Message(errors.New("plain")); got != "plain" {
		t.Errorf("Message = %q", got)
	}
}

// testNode writes a test-driver node with one running domain, "test", and
// returns its path: a connection to test:///<path> has a state of its own
// in libvirtd, unlike test:///default, which every client of the daemon
// shares.
func testNode(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.xml")
	err := os.WriteFile(path, []byte(`<node>
  <domain type="test">
    <name>test</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGetOpensOnceAndReuses(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	first, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	second, err := c.Get()
	if err != nil {
		t.Fatalf("second Get: %v", err)
	}
	if first != second {
		t.Errorf("second Get opened a new connection, want the first one reused")
	}
	mustListDomains(t, second)
}

func TestGetReopensConnectionClosedBehindItsBack(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	old, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if err := old.Disconnect(); err != nil {
		t.Fatalf("close the connection behind Conn's back: %v", err)
	}

	fresh, err := c.Get()
	if err != nil {
		t.Fatalf("Get after the connection was closed: %v", err)
	}
	if fresh == old {
		t.Fatalf("Get returned the closed connection")
	}
	mustListDomains(t, fresh)
}

// loseSocket closes c's socket, as a libvirtd going away would, and waits
// until go-libvirt has seen it.
func loseSocket(t *testing.T, c *Conn) {
	t.Helper()
	c.mu.Lock()
	conn, sock := c.conn, c.sock
	c.mu.Unlock()
	sock.close()
	select {
	case <-conn.Disconnected():
	case <-time.After(10 * time.Second):
		t.Fatalf("go-libvirt did not see its socket closed within 10 s")
	}
}

func TestGetReopensAfterSocketLost(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	old, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	lost := c.Lost()
	loseSocket(t, c)
	select {
	case <-lost:
	default:
		t.Fatalf("Lost's channel not closed after the socket was")
	}

	fresh, err := c.Get()
	if err != nil {
		t.Fatalf("Get after the socket was lost: %v", err)
	}
	if fresh == old {
		t.Fatalf("Get returned the lost connection")
	}
	mustListDomains(t, fresh)
}

func TestOnConnect(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	// log records what the hooks did, in order. early runs on every
	// connection opened after it is registered; late is registered on an
	// open connection.
	var log []string
	conns := map[*libvirt.Libvirt]int{}
	name := func(conn *libvirt.Libvirt) string {
		if _, ok := conns[conn]; !ok {
			conns[conn] = len(conns) + 1
		}
		return fmt.Sprintf("conn%d", conns[conn])
	}
	c.OnConnect(func(conn *libvirt.Libvirt) func() {
		// A hook may make calls on the connection it is given.
		mustListDomains(t, conn)
		log = append(log, "early on "+name(conn))
		return func() {
			log = append(log, "early undone on "+name(conn))
		}
	})
	if len(log) != 0 {
		t.Fatalf("hook ran before any connection was opened: %q", log)
	}

	first, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := c.Get(); err != nil {
		t.Fatalf("second Get: %v", err)
	}
	c.OnConnect(func(conn *libvirt.Libvirt) func() {
		log = append(log, "late on "+name(conn))
		return nil
	})

	loseSocket(t, c)
	second, err := c.Get()
	if err != nil {
		t.Fatalf("Get after the connection died: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c.OnConnect(func(*libvirt.Libvirt) func() {
		t.Errorf("hook registered after Close ran")
		return nil
	})

	if name(first) != "conn1" || name(second) != "conn2" {
		t.Fatalf("hooks did not run on the connections Get returned")
	}
	want := []string{
		"early on conn1",
		"late on conn1", // at once, on the open connection
		"early undone on conn1",
		"early on conn2",
		"late on conn2",
		"early undone on conn2",
	}
	if !slices.Equal(log, want) {
		t.Errorf("hooks ran:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
	}
}

func TestGetAfterClose(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	if _, err := c.Get(); err != nil {
		t.Fatalf("Get: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := c.Get()
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: got %v, want ErrClosed", err)
	}
}

func TestOpenErrorNamesURI(t *testing.T) {
	sock := t.TempDir() + "/no-such.sock"
	uri := "test+unix:///default?socket=" + sock
	c := New(uri, testLogger(t))
	t.Cleanup(func() { c.Close() })

	_, err := c.Get()
	if err == nil {
		t.Fatalf("Get on a socket that does not exist succeeded")
	}
	if !strings.Contains(err.Error(), uri) || !strings.Contains(err.Error(), sock) {
		t.Errorf("error %q does not name the URI %q and the socket", err, uri)
	}
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("error %v does not wrap the dial's error", err)
	}
}

func TestConcurrentGet(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	const n = 8
	conns := make([]*libvirt.Libvirt, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			conn, err := c.Get()
			if err != nil {
				t.Errorf("Get: %v", err)
				return
			}
			conns[i] = conn
		})
	}
	wg.Wait()
	for i := range conns {
		if conns[i] != conns[0] {
			t.Fatalf("concurrent Gets opened more than one connection")
		}
	}
}

// TestReconnectAfterDaemonDropsClient has the real libvirtd drop our client
// connection (through the admin API, as a daemon restart would) and checks
// that the loss is seen and Get opens a new, working connection.
func TestReconnectAfterDaemonDropsClient(t *testing.T) {
	needs.Libvirtd(t)
	if _, err := os.Stat(adminSocket); err != nil {
		needs.Missing(t, "needs libvirtd's admin socket %s to disconnect a client: %v", adminSocket, err)
	}

	c := New("test+unix:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })
	old, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	mustListDomains(t, old)
	lost := c.Lost()

	if n := disconnectOwnClients(t); n == 0 {
		t.Fatalf("libvirtd lists no client connection of this process")
	}

	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatalf("loss not seen within 30s of libvirtd dropping the client")
	}

	fresh, err := c.Get()
	if err != nil {
		t.Fatalf("Get after libvirtd dropped the client: %v", err)
	}
	if fresh == old {
		t.Fatalf("Get returned the dropped connection")
	}
	mustListDomains(t, fresh)
}

// disconnectOwnClients has libvirtd close every client connection of this
// process and returns how many it closed. It drives virt-admin rather than
// the Go admin binding: libvirt-admin.so and libvirt.so register the same
// object types, and loading both into one process crashes it.
func disconnectOwnClients(t *testing.T) int {
	t.Helper()
	list := virtAdmin(t, "srv-clients-list", "libvirtd")
	closed := 0
	for _, line := range strings.Split(list, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		id := fields[0]
		if _, err := strconv.ParseUint(id, 10, 64); err != nil {
			continue // header or ruler
		}
		// Another process's client may be gone since the listing.
		info, err := tryVirtAdmin(t, "client-info", "libvirtd", id)
		if err != nil || clientPID(info) != os.Getpid() {
			continue
		}
		virtAdmin(t, "client-disconnect", "libvirtd", id)
		closed++
	}
	return closed
}

// clientPID returns the unix_process_id line of virt-admin client-info.
func clientPID(info string) int {
	for _, line := range strings.Split(info, "\n") {
		key, value, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(key) == "unix_process_id" {
			pid, err := strconv.Atoi(strings.TrimSpace(value))
			if err == nil {
				return pid
			}
		}
	}
	return -1
}

func virtAdmin(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tryVirtAdmin(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryVirtAdmin(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path := needs.Program(t, "virt-admin")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if len(out) > 64<<10 {
		out = out[:64<<10]
	}
	if err != nil {
		return "", fmt.Errorf("virt-admin %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func mustListDomains(t *testing.T, conn *libvirt.Libvirt) {
	t.Helper()
	if _, _, err := conn.ConnectListAllDomains(1, 0); err != nil {
		t.Fatalf("list domains: %v", err)
	}
}

// A call whose caller left (a client hung up mid-action) is not given up
// on: the next caller for the same work waits for it and then runs,
// rather than be refused as if libvirt hung. One whose time ran out is.
func TestCallAfterCallerLeft(t *testing.T) {
	needs.Libvirtd(t)
	c := New("test:///default", testLogger(t))
	defer c.Close()
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		first <- c.CallWithin(ctx, "start domain x", time.Minute, func(*libvirt.Libvirt) error { <-release; return nil })
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first call: %v, want its caller's cancellation", err)
	}
	second := make(chan error, 1)
	ran := false
	go func() {
		second <- c.CallWithin(context.Background(), "start domain x", time.Minute, func(*libvirt.Libvirt) error { ran = true; return nil })
	}()
	close(release)
	if err := <-second; err != nil || !ran {
		t.Fatalf("second call after the first caller left: %v (ran %v), want it to wait and run", err, ran)
	}

	// Timed out: the same work is refused at once until the first returns.
	hang := make(chan struct{})
	defer close(hang)
	if err := c.CallWithin(context.Background(), "start domain y", 20*time.Millisecond, func(*libvirt.Libvirt) error { <-hang; return nil }); !errors.Is(err, ErrTimeout) {
		t.Fatalf("hung call: %v, want ErrTimeout", err)
	}
	if err := c.CallWithin(context.Background(), "start domain y", time.Minute, func(*libvirt.Libvirt) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Fatalf("call after a hung one: %v, want ErrBusy", err)
	}
}

// TestFrozenLibvirtd stops (SIGSTOP) a private libvirtd under a Conn: a
// call is given up on after the timeout and the same call refused at once
// after it; a call only slow is not a frozen libvirtd (the ping answers,
// the connection stays); a frozen one is pinged, and past the keepalive
// the connection is closed, so that the calls left on it return; an
// opening left hanging is cut by Close; and once libvirtd runs again, the
// Conn works again.
func TestFrozenLibvirtd(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	uri := daemon.URI(testNode(t))
	c := New(uri, testLogger(t), WithTimeout(200*time.Millisecond), WithKeepalive(time.Second))
	t.Cleanup(func() { c.Close() })
	ping := func(conn *libvirt.Libvirt) error { _, err := conn.ConnectGetLibVersion(); return err }
	if err := c.Call(t.Context(), "ping", ping); err != nil {
		t.Fatalf("ping: %v", err)
	}

	// Slow, not frozen: a call that outlives its timeout while libvirtd
	// answers leaves the connection open.
	slow := make(chan struct{})
	if err := c.Call(t.Context(), "slow", func(*libvirt.Libvirt) error { <-slow; return nil }); !errors.Is(err, ErrTimeout) {
		t.Fatalf("slow call: %v, want ErrTimeout", err)
	}
	lost := c.Lost()
	select {
	case <-lost:
		t.Fatalf("connection closed after a slow call, with libvirtd answering")
	case <-time.After(1500 * time.Millisecond):
	}
	close(slow)

	resume := daemon.Freeze()
	defer resume()

	start := time.Now()
	if err := c.Call(t.Context(), "ping", ping); !errors.Is(err, ErrTimeout) {
		t.Fatalf("ping of the stopped libvirtd: %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("ping of the stopped libvirtd returned after %s, timeout 200ms", took)
	}
	if err := c.Call(t.Context(), "ping", ping); !errors.Is(err, ErrBusy) {
		t.Fatalf("second ping of the stopped libvirtd: %v, want ErrBusy", err)
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatalf("connection still open 10 s after libvirtd stopped (keepalive 1 s)")
	}
	// The call left on the closed connection returned: the same is
	// tried again, and waits on the opening of a new connection.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Call(t.Context(), "ping", ping)
		if errors.Is(err, ErrTimeout) {
			break
		}
		if !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			t.Fatalf("ping after the connection was closed: %v, want ErrTimeout (a new opening, unanswered)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	resume()
	deadline = time.Now().Add(30 * time.Second)
	for {
		err := c.Call(t.Context(), "ping", ping)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping 30 s after libvirtd continued: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// An opening that hangs is cut by Close.
	resume = daemon.Freeze()
	hung := New(uri, testLogger(t))
	got := make(chan error, 1)
	go func() { _, err := hung.Get(); got <- err }()
	time.Sleep(200 * time.Millisecond)
	if err := hung.Close(); err != nil {
		t.Errorf("Close during an opening: %v", err)
	}
	select {
	case err := <-got:
		if err == nil {
			t.Errorf("Get cut by Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Get still waiting 10 s after Close")
	}
}

// TestSubscribe checks that a subscription hears libvirt's lifecycle
// events in order, and nothing once stopped.
func TestSubscribe(t *testing.T) {
	needs.Libvirtd(t)
	conn, err := Dial("test:///" + testNode(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Disconnect() })
	events := make(chan string, 16)
	stop, err := Subscribe(conn, libvirt.DomainEventIDLifecycle, func(ev any) {
		m := ev.(*libvirt.DomainEventCallbackLifecycleMsg).Msg
		events <- fmt.Sprintf("%s %s %d", m.Dom.Name, libvirt.DomainEventType(m.Event), m.Detail)
	})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.DomainLookupByName("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	if err := conn.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"test DomainEventStopped 1", "test DomainEventStarted 0"} {
		select {
		case got := <-events:
			if got != want {
				t.Errorf("event %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event within 10 s, want %q", want)
		}
	}
	stop()
	if err := conn.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	// A round trip after the destroy: its event, if any were sent, came
	// before the answer.
	mustListDomains(t, conn)
	time.Sleep(100 * time.Millisecond)
	select {
	case got := <-events:
		t.Errorf("event %q after stop", got)
	default:
	}
}
