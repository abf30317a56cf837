package libvirtconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"caretaker/internal/needs"
)

const (
	daemonSocket = "/var/run/libvirt/libvirt-sock"
	adminSocket  = "/var/run/libvirt/libvirt-admin-sock"
)

func TestMain(m *testing.M) {
	// The event loop must be registered before the first connection is
	// opened, and only once per process, so it is started here rather than
	// in the test that needs it.
	if err := StartEventLoop(context.Background(), slog.New(slog.DiscardHandler)); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestStartEventLoopTwice(t *testing.T) {
	if err := StartEventLoop(t.Context(), testLogger(t)); err != nil {
		t.Fatalf("second StartEventLoop: %v", err)
	}
}

func TestGetOpensOnceAndReuses(t *testing.T) {
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
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	old, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := old.Close(); err != nil {
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

func TestGetReopensAfterCloseCallback(t *testing.T) {
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	old, err := c.Get()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	// The in-process test driver never drops a connection, so play the
	// part of libvirt's close callback: mark the connection dead.
	c.mu.Lock()
	close(c.dead)
	c.mu.Unlock()

	fresh, err := c.Get()
	if err != nil {
		t.Fatalf("Get after the close callback: %v", err)
	}
	if fresh == old {
		t.Fatalf("Get returned the connection its close callback reported dead")
	}
	mustListDomains(t, fresh)
}

func TestOnConnect(t *testing.T) {
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	// log records what the hooks did, in order. early runs on every
	// connection opened after it is registered; late is registered on an
	// open connection.
	var log []string
	conns := map[*libvirt.Connect]int{}
	name := func(conn *libvirt.Connect) string {
		if _, ok := conns[conn]; !ok {
			conns[conn] = len(conns) + 1
		}
		return fmt.Sprintf("conn%d", conns[conn])
	}
	c.OnConnect(func(conn *libvirt.Connect) func() {
		// A hook may make calls on the connection it is given.
		mustListDomains(t, conn)
		log = append(log, "early on "+name(conn))
		return func() {
			mustListDomains(t, conn) // still open
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
	c.OnConnect(func(conn *libvirt.Connect) func() {
		log = append(log, "late on "+name(conn))
		return nil
	})

	// Mark the connection dead, as its close callback would.
	c.mu.Lock()
	close(c.dead)
	c.mu.Unlock()
	second, err := c.Get()
	if err != nil {
		t.Fatalf("Get after the connection died: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c.OnConnect(func(*libvirt.Connect) func() {
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
	uri := "test+unix:///default?socket=" + t.TempDir() + "/no-such.sock"
	c := New(uri, testLogger(t))
	t.Cleanup(func() { c.Close() })

	_, err := c.Get()
	if err == nil {
		t.Fatalf("Get on a socket that does not exist succeeded")
	}
	if !strings.Contains(err.Error(), uri) {
		t.Errorf("error %q does not name the URI %q", err, uri)
	}
	var lverr libvirt.Error
	if !errors.As(err, &lverr) {
		t.Errorf("error %v does not wrap the libvirt error", err)
	}
}

func TestConcurrentGet(t *testing.T) {
	c := New("test:///default", testLogger(t))
	t.Cleanup(func() { c.Close() })

	const n = 8
	conns := make([]*libvirt.Connect, n)
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
// that the close callback fires and Get opens a new, working connection.
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
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()

	if n := disconnectOwnClients(t); n == 0 {
		t.Fatalf("libvirtd lists no client connection of this process")
	}

	select {
	case <-dead:
	case <-time.After(30 * time.Second):
		t.Fatalf("close callback did not fire within 30s of libvirtd dropping the client")
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
		info := virtAdmin(t, "client-info", "libvirtd", id)
		if clientPID(info) != os.Getpid() {
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
	path := needs.Program(t, "virt-admin")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if len(out) > 64<<10 {
		out = out[:64<<10]
	}
	if err != nil {
		t.Fatalf("virt-admin %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustListDomains(t *testing.T, conn *libvirt.Connect) {
	t.Helper()
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		t.Fatalf("list domains: %v", err)
	}
	for i := range doms {
		doms[i].Free()
	}
}

// A call whose caller left (a client hung up mid-action) is not given up
// on: the next caller for the same work waits for it and then runs,
// rather than be refused as if libvirt hung. One whose time ran out is.
func TestCallAfterCallerLeft(t *testing.T) {
	c := New("test:///default", testLogger(t))
	defer c.Close()
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		first <- c.CallWithin(ctx, "start domain x", time.Minute, func(*libvirt.Connect) error { <-release; return nil })
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first call: %v, want its caller's cancellation", err)
	}
	second := make(chan error, 1)
	ran := false
	go func() {
		second <- c.CallWithin(context.Background(), "start domain x", time.Minute, func(*libvirt.Connect) error { ran = true; return nil })
	}()
	close(release)
	if err := <-second; err != nil || !ran {
		t.Fatalf("second call after the first caller left: %v (ran %v), want it to wait and run", err, ran)
	}

	// Timed out: the same work is refused at once until the first returns.
	hang := make(chan struct{})
	defer close(hang)
	if err := c.CallWithin(context.Background(), "start domain y", 20*time.Millisecond, func(*libvirt.Connect) error { <-hang; return nil }); !errors.Is(err, ErrTimeout) {
		t.Fatalf("hung call: %v, want ErrTimeout", err)
	}
	if err := c.CallWithin(context.Background(), "start domain y", time.Minute, func(*libvirt.Connect) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Fatalf("call after a hung one: %v, want ErrBusy", err)
	}
}
