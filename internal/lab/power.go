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
	ctx   context.Context
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
	p := &labPower{r: r, boots: map[string]int{}, ctx: ctx}
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
		if err := p.r.stopGuests(h); err != nil {
			log.Warn("lab: stop guests", "err", err)
		}
		return
	}
	if boot == labbmc.BootPXE {
		p.mu.Lock()
		url := p.serverURL
		p.boots[name]++
		p.mu.Unlock()
		log.Info("lab: host powered on, booting over PXE", "server", url)
		fw := labbmc.Firmware{BaseURL: url, MAC: hostMAC(p.r.hostIndex(name)), Timeout: time.Minute,
			Client: &http.Client{Timeout: 30 * time.Second}}
		rep, err := fw.Boot(p.ctx)
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
	}
	if err := h.agent.start(p.ctx); err != nil {
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

// stopGuests destroys the running guests of h: the lab's and the cluster
// nodes its agent made, as a power loss stops them.
func (r *labRun) stopGuests(h *host) error {
	conn, err := libvirtconn.Dial(h.uri)
	if err != nil {
		return err
	}
	defer conn.Disconnect()
	doms, _, err := conn.ConnectListAllDomains(1, 1) // active
	if err != nil {
		return fmt.Errorf("list domains: %w", err)
	}
	for _, d := range doms {
		if h.filter.MatchString(d.Name) || r.cl != nil && r.cl.hasNode(h.name, d.Name) {
			if err := conn.DomainDestroy(d); err != nil {
				r.o.Logger.Warn("lab: destroy guest of powered-off host", "domain", d.Name, "err", err)
			}
		}
	}
	return nil
}
