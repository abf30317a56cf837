package nsrun

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"caretaker/internal/overlaynet/nstest"
)

// A listener made in Do is in the namespace, and the caller's thread is
// back in its own.
func TestDo(t *testing.T) {
	ns := nstest.New(t)
	want, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	inside, err := Do(ns.Path, func() (netns.NsHandle, error) { return netns.Get() })
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(want) {
		t.Errorf("Do ran in %s, want %s", inside, want)
	}
	// lo is down in a new namespace: a listener there takes no
	// connection from here, where lo is up.
	l, err := Do(ns.Path, func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Errorf("dialled %s from outside its namespace", l.Addr())
	}
	here, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()
	if here.Equal(want) {
		t.Error("the caller's thread stayed in the namespace")
	}
}

func TestDoMissingNamespace(t *testing.T) {
	_, err := Do("/var/run/netns/caretaker-no-such-ns", func() (int, error) { return 1, nil })
	if err == nil || !strings.Contains(err.Error(), "open network namespace /var/run/netns/caretaker-no-such-ns") {
		t.Errorf("err = %v, want one naming the namespace", err)
	}
}
