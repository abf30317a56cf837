package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
)

// guest is one lab guest.
type guest struct {
	name string
	uuid string
	// With the lab's network: its cluster and address (see placed).
	cluster string
	addr    netip.Prefix
}

const libvirtSocket = "/var/run/libvirt/libvirt-sock"

// chooseDriver picks real QEMU guests when libvirtd with QEMU is there (and
// starts libvirtd when it is installed but not running and we are root),
// otherwise libvirt's test driver. The second result says why, for the
// operator.
func chooseDriver(ctx context.Context, o Options) (string, string) {
	if o.Driver == "test" {
		return "test", "guests use libvirt's test driver (--driver test)"
	}
	if err := ensureLibvirtd(ctx, o.Logger); err != nil {
		return "test", fmt.Sprintf("libvirtd with QEMU is not available (%v): guests use libvirt's test driver, in memory, in a libvirtd of the lab's own; install the Debian packages libvirt-daemon-system and qemu-system-x86 for real QEMU guests", err)
	}
	if err := checkQEMU(o.LibvirtURI); err != nil {
		return "test", fmt.Sprintf("%v: guests use libvirt's test driver, in memory, in a libvirtd of the lab's own; install qemu-system-x86 for real QEMU guests", err)
	}
	return "qemu", fmt.Sprintf("real QEMU guests (domain type qemu: TCG) through %s", o.LibvirtURI)
}

// ensureLibvirtd starts virtlogd and libvirtd the way DESIGN.md describes
// when the socket is missing, the daemons are installed and we are root.
func ensureLibvirtd(ctx context.Context, logger *slog.Logger) error {
	if _, err := os.Stat(libvirtSocket); err == nil {
		return nil
	}
	libvirtd, err := exec.LookPath("libvirtd")
	if err != nil {
		return errors.New("libvirtd is not installed")
	}
	if os.Geteuid() != 0 {
		return errors.New("libvirtd is not running, and only root may start it")
	}
	for _, d := range []string{"/var/log/libvirt", "/var/run/libvirt"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("start libvirtd: %w", err)
		}
	}
	if virtlogd, err := exec.LookPath("virtlogd"); err == nil {
		// Fails harmlessly when virtlogd already runs.
		_ = runCommand(ctx, virtlogd, "-d")
	}
	logger.Info("starting libvirtd", "path", libvirtd)
	if err := runCommand(ctx, libvirtd, "-d"); err != nil {
		return fmt.Errorf("start libvirtd: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if _, err := os.Stat(libvirtSocket); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // polling a socket path that has no event to await
		}
	}
	return errors.New("libvirtd started but its socket did not appear within 30s")
}

// runCommand runs a program (no shell) with a timeout, capping its output.
func runCommand(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out capped
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// capped keeps the first 4 KiB written to it.
type capped struct{ b []byte }

func (c *capped) Write(p []byte) (int, error) {
	if room := 4096 - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.b) }

// checkQEMU tells whether the libvirtd at uri can run x86_64 guests of
// domain type qemu (TCG: no /dev/kvm needed).
func checkQEMU(uri string) error {
	conn, err := libvirtconn.Dial(uri)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", uri, err)
	}
	defer conn.Disconnect()
	xml, err := conn.ConnectGetCapabilities()
	if err != nil {
		return fmt.Errorf("capabilities of %s: %w", uri, err)
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(xml); err != nil {
		return fmt.Errorf("capabilities of %s: %w", uri, err)
	}
	for _, g := range caps.Guests {
		if g.Arch.Name != "x86_64" {
			continue
		}
		for _, d := range g.Arch.Domains {
			if d.Type == "qemu" {
				return nil
			}
		}
	}
	return fmt.Errorf("%s cannot run x86_64 guests of domain type qemu", uri)
}

// labMetadata marks a guest as meant to run, in one of the lab's guest
// clusters.
func labMetadata(cluster string) (string, error) {
	return guestmeta.Metadata{Intent: "running", Cluster: cluster, Role: "worker"}.XML()
}

func guestName(prefix, host string, i int) string {
	return fmt.Sprintf("%s%s-%d", prefix, host, i)
}

// qemuGuests creates and removes the lab's real QEMU guests.
type qemuGuests struct {
	uri    string
	prefix string
	logger *slog.Logger
	out    io.Writer
	// place, when set, says a guest's cluster and plugs its NIC in (the
	// lab's network): the i-th guest (from 1) of host h.
	place func(h *host, i int) (placed, error)
}

// placed is where a lab guest is: its cluster, and with the lab's network
// its NIC and (with the guest OS) what it boots.
type placed struct {
	cluster string
	addr    netip.Prefix                     // its address, which it takes when it boots
	bridge  string                           // the root namespace's bridge its NIC is on
	mac     string                           // its NIC's
	boot    func(d *libvirtxml.Domain) error // nil: it boots nothing
}

func (q *qemuGuests) create(hosts []*host, perHost int) error {
	conn, err := libvirtconn.Dial(q.uri)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", q.uri, err)
	}
	defer conn.Disconnect()
	if n, err := q.removeWith(conn, hosts); err != nil {
		return err
	} else if n > 0 {
		fmt.Fprintf(q.out, "removed %d guests left by an earlier lab\n", n)
	}
	// All at once: libvirtd defines and starts guests in parallel, and
	// each takes seconds where /dev/kvm is unusable (libvirt probes QEMU
	// again on every call).
	type made struct {
		g   guest
		err error
	}
	results := make([][]made, len(hosts))
	var wg sync.WaitGroup
	var mu sync.Mutex // q.out
	for hi, h := range hosts {
		h.uri = q.uri
		results[hi] = make([]made, perHost)
		for i := range perHost {
			wg.Go(func() {
				name := guestName(q.prefix, h.name, i+1)
				start := time.Now()
				g, err := q.defineAndStart(conn, h, i+1, name)
				results[hi][i] = made{g, err}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					fmt.Fprintf(q.out, "creating guest %s on %s… failed\n", name, h.name)
					return
				}
				fmt.Fprintf(q.out, "created guest %s on %s: running (%.1fs)\n", name, h.name, time.Since(start).Seconds())
			})
		}
	}
	wg.Wait()
	var errs []error
	for hi, h := range hosts {
		for _, m := range results[hi] {
			if m.err != nil {
				errs = append(errs, m.err)
				continue
			}
			h.guests = append(h.guests, m.g)
		}
	}
	return errors.Join(errs...)
}

// defineAndStart makes the i-th guest of h.
func (q *qemuGuests) defineAndStart(conn *libvirt.Libvirt, h *host, i int, name string) (guest, error) {
	p := placed{cluster: "lab"}
	if q.place != nil {
		var err error
		if p, err = q.place(h, i); err != nil {
			return guest{}, fmt.Errorf("guest %s: %w", name, err)
		}
	}
	meta, err := labMetadata(p.cluster)
	if err != nil {
		return guest{}, err
	}
	d := bareDomain(name, meta)
	if p.bridge != "" {
		d.Devices = &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{{
			MAC:    &libvirtxml.DomainInterfaceMAC{Address: p.mac},
			Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: p.bridge}},
			Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		}}}
	}
	if p.boot != nil {
		if err := p.boot(&d); err != nil {
			return guest{}, fmt.Errorf("guest %s: %w", name, err)
		}
	}
	xml, err := d.Marshal()
	if err != nil {
		return guest{}, fmt.Errorf("guest %s: %w", name, err)
	}
	g, err := startXML(conn, name, xml)
	g.cluster, g.addr = p.cluster, p.addr
	return g, err
}

func domainXML(name, metadata string) (string, error) {
	d := bareDomain(name, metadata)
	return d.Marshal()
}

// bareDomain is a guest of 64 MiB with no disk and no NIC, which idles in
// its firmware.
func bareDomain(name, metadata string) libvirtxml.Domain {
	return libvirtxml.Domain{
		Type:   "qemu",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
		},
		Metadata:   &libvirtxml.DomainMetadata{XML: metadata},
		OnCrash:    "destroy",
		OnPoweroff: "destroy",
	}
}

func defineAndStart(conn *libvirt.Libvirt, name, meta string) (guest, error) {
	xml, err := domainXML(name, meta)
	if err != nil {
		return guest{}, fmt.Errorf("guest %s: %w", name, err)
	}
	return startXML(conn, name, xml)
}

func startXML(conn *libvirt.Libvirt, name, xml string) (guest, error) {
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		return guest{}, fmt.Errorf("define guest %s: %w", name, err)
	}
	if err := conn.DomainCreate(dom); err != nil {
		return guest{}, fmt.Errorf("start guest %s: %w", name, err)
	}
	return guest{name: name, uuid: libvirtconn.UUIDString(dom.UUID)}, nil
}

// remove destroys and undefines every guest that belongs to the lab's
// hosts, including ones left by an earlier lab that did not stop cleanly.
func (q *qemuGuests) remove(hosts []*host) error {
	conn, err := libvirtconn.Dial(q.uri)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", q.uri, err)
	}
	defer conn.Disconnect()
	_, err = q.removeWith(conn, hosts)
	return err
}

func (q *qemuGuests) removeWith(conn *libvirt.Libvirt, hosts []*host) (int, error) {
	doms, _, err := conn.ConnectListAllDomains(1, 0)
	if err != nil {
		return 0, fmt.Errorf("list domains: %w", err)
	}
	var errs []error
	n := 0
	for _, dom := range doms {
		name := dom.Name
		if !ownedBy(name, hosts) {
			continue
		}
		if dom.ID != -1 {
			if err := conn.DomainDestroy(dom); err != nil && !libvirtconn.IsCode(err, libvirt.ErrOperationInvalid) {
				errs = append(errs, fmt.Errorf("destroy %s: %w", name, err))
			}
		}
		if err := conn.DomainUndefine(dom); err != nil {
			errs = append(errs, fmt.Errorf("undefine %s: %w", name, err))
		} else {
			n++
			q.logger.Debug("removed lab guest", "domain", name)
		}
	}
	return n, errors.Join(errs...)
}

func ownedBy(name string, hosts []*host) bool {
	for _, h := range hosts {
		if h.filter.MatchString(name) {
			return true
		}
	}
	return false
}

// writeTestNodes writes one libvirt test-driver node file per host, whose
// guests start out running; each agent opens its own copy in lvd, the
// lab's libvirtd.
func writeTestNodes(dir, prefix string, hosts []*host, perHost int, lvd *testLibvirtd) error {
	meta, err := labMetadata("lab")
	if err != nil {
		return err
	}
	for _, h := range hosts {
		var b strings.Builder
		b.WriteString("<node>\n")
		for i := 1; i <= perHost; i++ {
			g := guest{name: guestName(prefix, h.name, i), uuid: newUUID()}
			fmt.Fprintf(&b, "  <domain type='test'>\n    <name>%s</name>\n    <uuid>%s</uuid>\n"+
				"    <memory unit='MiB'>64</memory>\n    <vcpu>1</vcpu>\n    <os><type arch='x86_64'>hvm</type></os>\n"+
				"    <metadata>%s</metadata>\n  </domain>\n", g.name, g.uuid, meta)
			h.guests = append(h.guests, g)
		}
		b.WriteString("</node>\n")
		path := filepath.Join(dir, h.name+".xml")
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("write test node: %w", err)
		}
		h.uri = lvd.uri(path)
	}
	return nil
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
