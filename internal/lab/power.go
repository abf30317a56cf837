package lab

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/labbmc"
	"caretaker/internal/libvirtconn"
)

// The lab's hosts have BMCs (labbmc: an ipmi_sim each) with the guest
// clusters' provisioner, so that the server can fence and reprovision a
// host end to end: power off stops the host's agent and its guests, as a
// machine losing power does; power on starts the agent again, after a
// PXE boot (labbmc.Firmware, against the server's /pxe/) when the boot
// device was set to PXE — the provisioner's reprovision-host. Such a boot
// "reinstalls" the host: its agent starts with nothing of before (the
// cluster nodes it had were moved elsewhere by the reprovisioning). The
// lab's own guests stay defined, shut off, as if re-registered from shared
// storage, for caretaker to start again.

// bmcUser is the lab BMCs' user.
const bmcUser = "lab"

// labPower is the lab's BMCs and what power does to its hosts.
type labPower struct {
	r    *labRun
	bmcs *labbmc.BMCs
	// serverURL is where the firmware fetches its PXE scripts, set once
	// the server listens.
	mu        sync.Mutex
	serverURL string
	// boots counts each host's PXE boots, for the game day.
	boots map[string]int
	// off are the cluster nodes of each powered-off host: on a machine of
	// its own, another host's libvirtd would not see them.
	off map[string][]string // host → domain XMLs
}

// startPower starts a BMC per host, with guest clusters and ipmi_sim;
// otherwise the hosts have none and the inventory's BMCs go nowhere.
func (r *labRun) startPower(ctx context.Context) error {
	if r.cl == nil {
		return nil
	}
	if _, err := exec.LookPath("ipmi_sim"); err != nil {
		r.noPower = "no BMCs: they need ipmi_sim (Debian: openipmi)"
		return nil
	}
	p := &labPower{r: r, boots: map[string]int{}, off: map[string][]string{}}
	var names []string
	for _, h := range r.hosts {
		names = append(names, h.name)
	}
	dir := filepath.Join(r.dataDir, "bmc")
	if err := os.RemoveAll(dir); err != nil { // an earlier lab's, on a kept --data.dir
		return fmt.Errorf("bmc directory: %w", err)
	}
	bmcs, err := labbmc.Start(ctx, labbmc.Options{Dir: dir, Hosts: names, Username: bmcUser, Password: newToken()[:16],
		Logger: r.o.Logger.With("component", "bmc"), OnPower: p.onPower})
	if err != nil {
		return fmt.Errorf("start the hosts' BMCs: %w", err)
	}
	r.undo.add("stop the BMCs", bmcs.Close)
	p.bmcs = bmcs
	r.power = p
	return nil
}

// hostMAC is the lab host's PXE MAC, the inventory's first.
func hostMAC(i int) string { return fmt.Sprintf("52:54:00:ca:fe:%02x", i+1) }

func (p *labPower) setServer(url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serverURL = url
}

// onPower is the BMCs' OnPower: calls of one host come in order.
func (p *labPower) onPower(name string, on bool, boot string) {
	h := p.r.host(name)
	if h == nil {
		return
	}
	log := p.r.o.Logger.With("host", name)
	if !on {
		log.Info("lab: host powered off: its agent and guests stop")
		if err := h.agent.stop(); err != nil {
			log.Warn("lab: stop agent", "err", err)
		}
		nodes, err := p.r.stopGuests(h)
		if err != nil {
			log.Warn("lab: stop guests", "err", err)
		}
		p.mu.Lock()
		p.off[name] = append(p.off[name], nodes...)
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	nodes := p.off[name]
	delete(p.off, name)
	p.mu.Unlock()
	if boot == labbmc.BootPXE {
		p.mu.Lock()
		url := p.serverURL
		p.boots[name]++
		p.mu.Unlock()
		log.Info("lab: host powered on, booting over PXE", "server", url)
		fw := labbmc.Firmware{BaseURL: url, MAC: hostMAC(p.r.hostIndex(name)), Timeout: time.Minute,
			Client: &http.Client{Timeout: 30 * time.Second}}
		rep, err := fw.Boot(p.r.ctx)
		if err != nil {
			// As a real host whose PXE boot failed: it stays off the
			// network; the provisioner's timeouts take it from there.
			log.Warn("lab: PXE boot failed", "err", err, "fetched", rep.String())
			return
		}
		log.Info("lab: PXE boot done, host reinstalled", "fetched", rep.String())
		if p.r.cl != nil {
			p.r.cl.forget(name)
		}
	} else {
		log.Info("lab: host powered on, booting its installed system")
		p.r.redefine(h, nodes)
	}
	if err := h.agent.start(p.r.ctx); err != nil {
		log.Warn("lab: start agent", "err", err)
	}
}

// pxeBoots is how many times host booted over PXE.
func (p *labPower) pxeBoots(host string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.boots[host]
}

func (r *labRun) host(name string) *host {
	for _, h := range r.hosts {
		if h.name == name {
			return h
		}
	}
	return nil
}

func (r *labRun) hostIndex(name string) int {
	for i, h := range r.hosts {
		if h.name == name {
			return i
		}
	}
	return -1
}

// stopGuests destroys the running guests of h, the lab's and the cluster
// nodes its agent made, as a power loss stops them. The nodes are
// undefined too, and their definitions returned: on a machine of its own
// they would stay on the host's disk, unseen by the other hosts, which
// the recreate-vm of a reprovisioning may place them on.
func (r *labRun) stopGuests(h *host) ([]string, error) {
	conn, err := libvirtconn.Dial(h.uri)
	if err != nil {
		return nil, err
	}
	defer conn.Disconnect()
	doms, _, err := conn.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	var nodes []string
	for _, d := range doms {
		node := r.cl != nil && r.cl.hasNode(h.name, d.Name)
		if !node && !h.filter.MatchString(d.Name) {
			continue
		}
		if active, _ := conn.DomainIsActive(d); active == 1 {
			if err := conn.DomainDestroy(d); err != nil {
				r.o.Logger.Warn("lab: destroy guest of powered-off host", "domain", d.Name, "err", err)
			}
		}
		if !node {
			continue
		}
		xml, err := conn.DomainGetXMLDesc(d, libvirt.DomainXMLInactive|libvirt.DomainXMLSecure)
		if err == nil {
			err = conn.DomainUndefine(d)
		}
		if err != nil {
			r.o.Logger.Warn("lab: set aside node of powered-off host", "domain", d.Name, "err", err)
			continue
		}
		nodes = append(nodes, xml)
	}
	return nodes, nil
}

// redefine defines again the nodes h had when it lost power, unless
// another host has a domain of that name by now.
func (r *labRun) redefine(h *host, nodes []string) {
	if len(nodes) == 0 {
		return
	}
	conn, err := libvirtconn.Dial(h.uri)
	if err != nil {
		r.o.Logger.Warn("lab: define nodes again", "host", h.name, "err", err)
		return
	}
	defer conn.Disconnect()
	for _, x := range nodes {
		var d libvirtxml.Domain
		if err := d.Unmarshal(x); err != nil {
			continue
		}
		if _, err := conn.DomainLookupByName(d.Name); err == nil {
			continue // moved: the other host's now
		}
		if _, err := conn.DomainDefineXML(x); err != nil {
			r.o.Logger.Warn("lab: define node again", "host", h.name, "err", err)
		}
	}
}
