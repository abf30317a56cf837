// Package lab runs the whole appliance on one machine: a server and the
// agents of two hosts, each with a few small guests to break, and room for
// guest clusters of 64 MiB nodes (clusters.go). It is what `caretaker lab`
// and `make run` start.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"caretaker/internal/config"
	"caretaker/internal/labbmc"
	"caretaker/internal/server"

	"libvirt.org/go/libvirtxml"
)

// Options configure a lab.
type Options struct {
	ListenAddress string // the server's address; with several, the first's
	// Servers is how many servers run: 1 is one server in the lab's own
	// process, as always; 2 to 5 are `caretaker server` processes sharing
	// their state in an etcd the lab runs as a process too, on
	// ListenAddress's port and the ones after it (ha.go).
	Servers int
	// LeaseTTL is the servers' cluster.lease_ttl with several: how long a
	// dead leader keeps the lead (whole seconds, at least 2).
	LeaseTTL time.Duration
	// Binary is the caretaker binary the servers run with several; ""
	// means this process's own executable.
	Binary        string
	DataDir       string // "" = a temporary directory, removed at exit
	Driver        string // "auto", "qemu" or "test"
	LibvirtURI    string // the libvirtd to use in qemu mode
	Hosts         int
	GuestsPerHost int
	GuestPrefix   string // every guest's name starts with it
	// Clusters lets the server create guest clusters on the lab's hosts
	// (runbook cluster create): with QEMU guests, as root.
	Clusters      bool
	RunbookConfig string // where to write runbook's config; "" = don't
	// ScrapeInterval and EvaluationInterval are the embedded Prometheus's;
	// short, so a crash is seen and healed within seconds.
	ScrapeInterval     time.Duration
	EvaluationInterval time.Duration
	// Events has the server follow the agents' libvirt event streams
	// (agents.events); false leaves healing to the rules.
	Events bool
	// PolicyFile is the remediation policy the server loads; "" is the
	// embedded default.
	PolicyFile string
	Out        io.Writer // the summary for the operator
	Logger     *slog.Logger

	// Chaos, ChaosHold and ChaosOutput are the game day's (chaos.go):
	// GameDay sets gameDay, which runs once the lab is up.
	Chaos       string
	ChaosHold   time.Duration
	ChaosOutput string
	gameDay     func(ctx context.Context, r *labRun, urls []string, token string) error
}

// DefaultOptions are `caretaker lab`'s defaults.
func DefaultOptions() Options {
	return Options{
		ListenAddress:      "127.0.0.1:9300",
		Servers:            1,
		LeaseTTL:           3 * time.Second,
		Driver:             "auto",
		LibvirtURI:         "qemu:///system",
		Hosts:              2,
		GuestsPerHost:      3,
		GuestPrefix:        "lab-",
		Clusters:           true,
		ScrapeInterval:     time.Second,
		EvaluationInterval: time.Second,
		Events:             true,
	}
}

// host is one simulated hypervisor host of the lab.
type host struct {
	name   string
	uri    string
	filter *regexp.Regexp
	guests []guest
	addr   string // the agent's listen address
	netns  string // its network namespace's path, with the lab's network
	vtep   string // its underlay address, with the lab's network
	agent  *hostAgent
}

// Run starts the lab and blocks until ctx is done, then removes everything
// it created: guests, the runbook config and, unless DataDir was given, the
// data directory.
func Run(ctx context.Context, o Options) (err error) {
	if err := o.validate(); err != nil {
		return err
	}
	r := &labRun{o: o, ctx: ctx}
	defer func() {
		if cerr := r.undo.run(o.Logger); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if _, port, _ := net.SplitHostPort(o.ListenAddress); o.Servers > 1 && port != "0" {
		// Before anything is made: a port taken is the likeliest
		// failure. (Free ports, for port 0, are chosen when used.)
		if r.serverAddrs, err = serverAddrs(o.ListenAddress, o.Servers); err != nil {
			return err
		}
	}
	if err := r.makeDataDir(); err != nil {
		return err
	}
	if err := r.pickDriver(ctx); err != nil {
		return err
	}
	r.makeHosts()
	if err := r.makeNetwork(ctx); err != nil {
		return err
	}
	if err := r.makeBoot(); err != nil {
		return err
	}
	if err := r.makeGuests(ctx); err != nil {
		return err
	}
	if err := r.makeClusters(ctx); err != nil {
		return err
	}
	if err := r.startPower(ctx); err != nil {
		return err
	}
	apiToken, agentToken := newToken(), newToken()
	if err := writeSecret(filepath.Join(r.dataDir, "api.token"), apiToken); err != nil {
		return err
	}
	// A token per lesser role, to try the console and runbook as each.
	for _, role := range labRoles() {
		if err := writeSecret(filepath.Join(r.dataDir, role+".token"), newToken()); err != nil {
			return err
		}
	}
	if err := writeSecret(filepath.Join(r.dataDir, "agent.token"), agentToken); err != nil {
		return err
	}
	if r.tls, err = makeTLS(r.dataDir); err != nil {
		return err
	}
	for _, h := range r.hosts {
		if err := r.startAgent(ctx, h, agentToken); err != nil {
			return err
		}
	}
	r.undo.add("stop the agents", func() error {
		var errs []error
		for _, h := range r.hosts {
			if h.agent != nil {
				errs = append(errs, h.agent.stop())
			}
		}
		return errors.Join(errs...)
	})
	var urls []string
	var served chan error
	if o.Servers > 1 {
		urls, err = r.startServers(ctx)
	} else {
		var apiURL string
		apiURL, served, err = r.startServer(ctx)
		urls = []string{apiURL}
	}
	if err != nil {
		return err
	}
	if o.RunbookConfig != "" {
		restore, err := writeRunbookConfigURLs(o.RunbookConfig, urls, apiToken)
		if err != nil {
			return err
		}
		r.undo.add("restore "+o.RunbookConfig, restore)
	}
	printSummary(r.o, r.driver, r.why, urls[0], apiToken, r.dataDir, r.hosts, r.cl != nil, r.noClusters, r.ha)
	r.printMachines()
	if o.gameDay != nil {
		return o.gameDay(ctx, r, urls, apiToken)
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(o.Out, "\nstopping the lab and removing what it created…")
		return nil
	case err := <-served:
		served <- err // for the cleanup, which waits on it
		return err
	}
}

// labRun is one run of the lab: what it made so far, and how to undo it.
type labRun struct {
	o       Options
	ctx     context.Context // the lab's: what it starts again lives in it
	undo    cleanups
	dataDir string
	// driver is "qemu" or "test"; why says why it was chosen.
	driver, why string
	hosts       []*host
	// net is the hosts' network namespaces, nil without QEMU guests and
	// root; noNet then says why.
	net   *labNet
	noNet string
	// boot, when set, makes a lab guest boot the guest OS (guestos) with
	// its name and address; noBoot says why not when nil.
	boot   func(d *libvirtxml.Domain, name string, addr netip.Prefix) error
	noBoot string
	// power is the hosts' BMCs, nil without; noPower then says why.
	power   *labPower
	noPower string
	// cl is nil without guest clusters; noClusters then says why.
	cl         *clusterLab
	noClusters string
	// tls is the lab's CA: agents serve over mTLS.
	tls *labTLS
	// ha is the servers and etcd with Options.Servers > 1, else nil;
	// serverAddrs are their listen addresses.
	ha          *haLab
	serverAddrs []string
}

// makeDataDir makes the data directory, a temporary one unless
// Options.DataDir names it.
func (r *labRun) makeDataDir() error {
	r.dataDir = r.o.DataDir
	if r.dataDir != "" {
		if err := os.MkdirAll(r.dataDir, 0o750); err != nil {
			return fmt.Errorf("create lab directory: %w", err)
		}
		return nil
	}
	dir, err := os.MkdirTemp("", "caretaker-lab-")
	if err != nil {
		return fmt.Errorf("create lab directory: %w", err)
	}
	r.dataDir = dir
	r.undo.add("remove "+dir, func() error { return os.RemoveAll(dir) })
	return nil
}

// pickDriver chooses QEMU guests or libvirt's test driver.
func (r *labRun) pickDriver(ctx context.Context) error {
	r.driver, r.why = chooseDriver(ctx, r.o)
	if r.o.Driver == "qemu" && r.driver != "qemu" {
		return fmt.Errorf("--driver qemu: %s", r.why)
	}
	r.o.Logger.Info("lab driver", "driver", r.driver, "why", r.why)
	return nil
}

// makeHosts names the hosts.
func (r *labRun) makeHosts() {
	r.hosts = make([]*host, r.o.Hosts)
	for i := range r.hosts {
		name := "host-" + string(rune('a'+i))
		r.hosts[i] = &host{
			name:   name,
			filter: regexp.MustCompile("^" + regexp.QuoteMeta(r.o.GuestPrefix+name+"-") + `\d+$`),
		}
	}
}

// makeNetwork makes a network namespace per host on a shared underlay
// (network.go), with QEMU guests as root; otherwise noNet says why not.
func (r *labRun) makeNetwork(ctx context.Context) error {
	switch {
	case r.driver != "qemu":
		r.noNet = "they need real QEMU guests"
		return nil
	case os.Geteuid() != 0:
		r.noNet = "they need root (network namespaces, bridges)"
		return nil
	}
	if _, err := exec.LookPath("ip"); err != nil {
		r.noNet = "they need the ip program (Debian: iproute2)"
		return nil
	}
	n, err := setupNetwork(ctx, r.o.GuestPrefix, r.hosts, r.o.Logger)
	if n != nil {
		r.undo.add("remove the hosts' network namespaces and the lab's bridges", func() error {
			return n.teardown(context.WithoutCancel(ctx))
		})
	}
	if err != nil {
		return err
	}
	r.net = n
	// The lab's own clusters: their overlays on every host, and the
	// bridges their guests plug into (numbered first, in order: 1, 2).
	for _, h := range r.hosts {
		hn := n.host(h.name)
		h.netns, h.vtep = hn.path, hn.addr.String()
		for _, lo := range labOverlays {
			if _, err := n.guestBridge(ctx, h.name, lo.cluster, "br-"+lo.cluster); err != nil {
				return err
			}
			if err := n.ensureOverlay(ctx, hn, n.labOverlay(lo.cluster, lo.vni, hn)); err != nil {
				return err
			}
		}
	}
	return nil
}

// placeGuest puts the i-th guest (from 1) of h in one of the lab's
// clusters, in turn, on that host's bridge of it, with an address.
func (r *labRun) placeGuest(ctx context.Context, h *host, i int) (placed, error) {
	lo := labOverlays[(i-1)%len(labOverlays)]
	br, err := r.net.guestBridge(ctx, h.name, lo.cluster, "br-"+lo.cluster)
	if err != nil {
		return placed{}, err
	}
	hn := r.net.host(h.name)
	c := r.net.clusterNumber(lo.cluster)
	p := placed{cluster: lo.cluster, bridge: br, addr: guestAddr(c, hn.idx, i),
		mac: fmt.Sprintf("52:54:00:77:%02x:%02x", c, hn.idx*20+i)}
	if r.boot != nil {
		p.boot = func(d *libvirtxml.Domain) error { return r.boot(d, guestName(r.o.GuestPrefix, h.name, i), p.addr) }
	}
	return p, nil
}

// makeGuests gives each host its guests.
func (r *labRun) makeGuests(ctx context.Context) error {
	if r.driver != "qemu" {
		lvd, err := startTestLibvirtd(ctx, r.o.Logger)
		if err != nil {
			return err
		}
		r.undo.add("stop the lab's libvirtd", lvd.stop)
		return writeTestNodes(r.dataDir, r.o.GuestPrefix, r.hosts, r.o.GuestsPerHost, lvd)
	}
	g := &qemuGuests{uri: r.o.LibvirtURI, prefix: r.o.GuestPrefix, logger: r.o.Logger, out: r.o.Out}
	if r.net != nil {
		g.place = func(h *host, i int) (placed, error) { return r.placeGuest(ctx, h, i) }
	}
	if err := g.create(r.hosts, r.o.GuestsPerHost); err != nil {
		g.remove(r.hosts)
		return err
	}
	hosts := r.hosts
	r.undo.add("remove lab guests", func() error { return g.remove(hosts) })
	return nil
}

// makeClusters readies the hosts for guest clusters where they can take
// them, and otherwise says why not in noClusters.
func (r *labRun) makeClusters(ctx context.Context) error {
	r.noClusters = "off (--clusters=false)"
	if !r.o.Clusters {
		return nil
	}
	if r.net == nil {
		r.noClusters = "off: " + r.noNet
		return nil
	}
	if err := checkClusters(); err != nil {
		r.noClusters = "off: " + err.Error()
		return nil
	}
	c, err := setupClusters(ctx, r.o.LibvirtURI, r.dataDir, r.o.GuestPrefix, r.net, r.o.Logger)
	if c != nil {
		r.undo.add("remove cluster nodes and the storage pool", func() error {
			return c.teardown(context.WithoutCancel(ctx))
		})
	}
	if err != nil {
		return err
	}
	r.cl = c
	return nil
}

// startServer writes the server's configuration, loads it as `caretaker
// server` would and serves it. It returns the API's URL and the channel
// that gets Serve's result.
func (r *labRun) startServer(ctx context.Context) (string, chan error, error) {
	l, err := net.Listen("tcp", r.o.ListenAddress)
	if err != nil {
		return "", nil, fmt.Errorf("server: listen on %s (is another caretaker running? --web.listen-address picks another address): %w", r.o.ListenAddress, err)
	}
	url := "http://" + l.Addr().String()
	if r.power != nil {
		r.power.setServer(url)
	}
	cfgPath, err := writeServerConfig(r.dataDir, r.hosts, r.o, r.cl, r.tls, r.power, url)
	if err != nil {
		l.Close()
		return "", nil, err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		l.Close()
		return "", nil, err
	}
	srv, err := server.New(ctx, server.Options{Config: cfg, ListenAddress: l.Addr().String(), Logger: r.o.Logger.With("component", "server")})
	if err != nil {
		l.Close()
		return "", nil, err
	}
	sctx, stopServer := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, l) }()
	r.undo.add("stop server", func() error { stopServer(); return errors.Join(<-served, srv.Close()) })
	return url, served, nil
}

func (o *Options) validate() error {
	switch {
	case o.Hosts < 1 || o.Hosts > 26:
		return fmt.Errorf("hosts: want 1 to 26, got %d", o.Hosts)
	case o.GuestsPerHost < 0 || o.GuestsPerHost > 50:
		return fmt.Errorf("guests per host: want 0 to 50, got %d", o.GuestsPerHost)
	case !strings.HasPrefix(o.GuestPrefix, "lab-"):
		return fmt.Errorf("guest prefix %q must start with lab-", o.GuestPrefix)
	case o.Driver != "auto" && o.Driver != "qemu" && o.Driver != "test":
		return fmt.Errorf("driver: want auto, qemu or test, got %q", o.Driver)
	case o.ScrapeInterval <= 0 || o.EvaluationInterval <= 0:
		return errors.New("scrape and evaluation intervals must be positive")
	case o.Servers < 1 || o.Servers > maxServers:
		return fmt.Errorf("servers: want 1 to %d, got %d", maxServers, o.Servers)
	case o.Servers > 1 && (o.LeaseTTL < 2*time.Second || o.LeaseTTL%time.Second != 0):
		return fmt.Errorf("lease TTL: want whole seconds, at least 2s, got %s", o.LeaseTTL)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

func printSummary(o Options, driver, why, apiURL, apiToken, dataDir string, hosts []*host, clusters bool, noClusters string, ha *haLab) {
	w := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "\ncaretaker lab is running — %s\n", why)
	fmt.Fprintf(w, "  console\t%s/console/  sign in with the admin token %s\n", apiURL, apiToken)
	fmt.Fprintf(w, "  \t(or as operator or viewer: the tokens in %s)\n", filepath.Join(dataDir, "{operator,viewer}.token"))
	if ha == nil {
		fmt.Fprintf(w, "  API\t%s/api/v1/  (bearer token in %s)\n", apiURL, filepath.Join(dataDir, "api.token"))
		fmt.Fprintf(w, "  server metrics\t%s/metrics\n", apiURL)
	} else {
		fmt.Fprintf(w, "  servers\t%d `caretaker server` processes sharing their state in etcd; one leads and acts (lease %s)\n", len(ha.servers), o.LeaseTTL)
		for _, s := range ha.servers {
			lead := ""
			if s.name == ha.leader {
				lead = "  leads"
			}
			fmt.Fprintf(w, "  server %s\t%s  pid %d  log %s%s\n", s.name, s.url(), s.Pid(), s.log, lead)
		}
		fmt.Fprintf(w, "  API\t<server>/api/v1/ on any server (bearer token in %s); metrics at <server>/metrics\n", filepath.Join(dataDir, "api.token"))
		fmt.Fprintf(w, "  etcd\t%s  pid %d  data %s  log %s\n", ha.etcd.Endpoint(), ha.etcd.Pid(), ha.etcdDir, ha.etcdLog)
	}
	for _, h := range hosts {
		fmt.Fprintf(w, "  agent %s\thttps://%s/metrics  (mTLS: %s)\n", h.name, h.addr, filepath.Join(dataDir, "pki"))
	}
	if ha == nil {
		fmt.Fprintf(w, "  journal\t%s\n", filepath.Join(dataDir, "journal.db"))
		fmt.Fprintf(w, "  server config\t%s\n", filepath.Join(dataDir, "server.yml"))
	} else {
		fmt.Fprintf(w, "  journal\tin etcd, under %s\n", etcdPrefix)
		fmt.Fprintf(w, "  server configs\t%s\n", filepath.Join(dataDir, "server-s*.yml"))
	}
	if o.RunbookConfig != "" {
		fmt.Fprintf(w, "  runbook\tconfigured in %s: try `runbook status`, `runbook history`\n", o.RunbookConfig)
	}
	var names []string
	for _, h := range hosts {
		for _, g := range h.guests {
			names = append(names, g.name)
		}
	}
	fmt.Fprintf(w, "  guests\t%s\n", strings.Join(names, " "))
	if !clusters {
		fmt.Fprintf(w, "  guest clusters\t%s\n", noClusters)
	}
	w.Flush()
	if driver == "qemu" && len(names) > 0 {
		fmt.Fprintf(o.Out, "\nBreak a guest and watch it heal:\n  kill -9 $(cat /run/libvirt/qemu/%s.pid)\n  virsh destroy %s\n  runbook history\n", names[0], names[0])
	}
	if ha != nil {
		printFailover(o, driver, dataDir, ha, names)
	}
	if clusters {
		// One node of a cluster per host: the example fits the lab's hosts.
		masters, workers := 1, min(len(hosts)-1, 2)
		fmt.Fprintf(o.Out, "\nCreate a guest cluster (one node per host; the hosts are ready ~15 s after the start: runbook host list):\n"+
			"  runbook cluster create demo --masters %d --workers %d --vcpus 1 --memory 64MiB --disk 64MiB --wait\n"+
			"  runbook cluster show demo\n  virsh list --name | grep ^demo-\n  runbook cluster delete demo --yes --wait\n", masters, workers)
	}
	fmt.Fprintln(o.Out, "\nCtrl-C stops the lab and removes what it created.")
}

// printMachines tells what the lab's hosts are made of: their network, the
// guests' OS and addresses, the BMCs — or why they have none.
func (r *labRun) printMachines() {
	if r.driver != "qemu" {
		return
	}
	w := tabwriter.NewWriter(r.o.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nThe hosts:")
	if r.net == nil {
		fmt.Fprintf(w, "  network\tnone: %s\n", r.noNet)
	} else {
		fmt.Fprintf(w, "  network\teach host is a network namespace (ip netns list): agents on %s, VXLAN underlay %s (device %q)\n",
			r.net.mgmt, r.net.underlay, underlayName)
		fmt.Fprintf(w, "  \tthe lab's clusters lab and lab-b have an overlay on every host (vx-lab, br-lab, …); guests are in %s\n", guestNet)
	}
	if r.boot == nil {
		fmt.Fprintf(w, "  guest OS\t%s\n", r.noBoot)
	} else {
		fmt.Fprintf(w, "  guest OS\tDebian's kernel and a busybox initramfs (guestos), booted directly; each guest answers ping and HTTP:\n")
		for _, h := range r.hosts {
			for _, g := range h.guests {
				fmt.Fprintf(w, "  \t%s\t%s\tcluster %s\tip netns exec %s busybox wget -qO- http://%s/cgi-bin/info\n",
					g.name, g.addr, g.cluster, filepath.Base(h.netns), g.addr.Addr())
			}
		}
	}
	if r.power != nil {
		for _, h := range r.hosts {
			fmt.Fprintf(w, "  BMC %s\tipmitool -I lanplus -H 127.0.0.1 -p %s -U %s -f %s chassis power status\n",
				h.name, strings.TrimPrefix(r.power.bmcs.Addr(h.name), "127.0.0.1:"), bmcUser, r.power.bmcs.PasswordFile())
		}
	} else if r.noPower != "" {
		fmt.Fprintf(w, "  BMCs\t%s\n", r.noPower)
	}
	w.Flush()
}

// labRoles are the roles besides admin that the lab makes a token for,
// each in <data dir>/<role>.token and named after its role.
func labRoles() []string { return []string{"operator", "viewer"} }

func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails on Linux (crypto/rand docs)
	return hex.EncodeToString(b)
}

func writeSecret(path, secret string) error {
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	return nil
}

// writeServerConfig writes the lab's server.yml, a real configuration file
// an operator can read and reuse, and loads it the way `caretaker server`
// would.
// With the hosts' BMCs, the server at url serves their PXE boots.
func writeServerConfig(dataDir string, hosts []*host, o Options, cl *clusterLab, lt *labTLS, pw *labPower, url string) (string, error) {
	path := filepath.Join(dataDir, "server.yml")
	pxe, err := writePXE(dataDir, pw, url)
	if err != nil {
		return "", err
	}
	return path, writeServerConfigAt(path, dataDir, dataDir, hosts, o, cl, lt, pw, pxe, "")
}

// writePXE writes the PXE config and secret of a lab with BMCs (pw) into
// dataDir and returns the provisioner's pxe: line for hosts that boot from
// the server at url; "" without BMCs.
func writePXE(dataDir string, pw *labPower, url string) (string, error) {
	if pw == nil {
		return "", nil
	}
	secret := filepath.Join(dataDir, "pxe.secret")
	if _, err := os.Stat(secret); err != nil {
		if err := writeSecret(secret, newToken()); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dataDir, "pxe.yml"), []byte(labbmc.LabProfile()), 0o600); err != nil {
		return "", fmt.Errorf("write PXE config: %w", err)
	}
	return fmt.Sprintf("  pxe: {config_file: pxe.yml, base_url: %q, secret_file: pxe.secret}\n", url), nil
}

// writeServerConfigAt writes a server configuration to path (in dataDir,
// where the tokens are) for a server keeping its own data in
// serverDataDir; cluster is its cluster section, "" for none.
// pxe is its provisioner's pxe: line, "" for none.
func writeServerConfigAt(path, dataDir, serverDataDir string, hosts []*host, o Options, cl *clusterLab, lt *labTLS, pw *labPower, pxe, cluster string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by caretaker lab\ndata_dir: %s\n", serverDataDir)
	fmt.Fprintf(&b, "api:\n  token_file: api.token\n  tokens:\n")
	for _, role := range labRoles() {
		fmt.Fprintf(&b, "    - {name: %s, role: %s, token_file: %s.token}\n", role, role, role)
	}
	fmt.Fprintf(&b, "agents:\n  token_file: agent.token\n")
	if !o.Events {
		b.WriteString("  events: false\n")
	}
	if lt != nil {
		b.WriteString(lt.serverConfig())
	}
	fmt.Fprintf(&b, "prometheus:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\n  retention: 24h\n",
		o.ScrapeInterval, o.ScrapeInterval, o.EvaluationInterval)
	fmt.Fprintf(&b, "remediation:\n  action_timeout: 1m\n")
	if o.PolicyFile != "" {
		abs, err := filepath.Abs(o.PolicyFile)
		if err != nil {
			return fmt.Errorf("policy file: %w", err)
		}
		fmt.Fprintf(&b, "  policy_file: %q\n", abs)
	}
	if cl != nil {
		// The inventory's hosts are scraped through the provisioner's
		// file_sd: listing them under hosts: too would scrape them twice.
		if err := writeInventory(dataDir, hosts, pw); err != nil {
			return err
		}
		fmt.Fprintf(&b, "provisioner:\n  inventory_file: inventory.yml\n  underlay: %s\n  base_image: %s\n  overcommit: {cpu: 1, memory: 1}\n", underlayName, baseImage)
		secrets := dataDir // bmc.password
		if pw != nil {
			secrets = pw.bmcs.SecretsDir()
		}
		fmt.Fprintf(&b, "  bmc: {secrets_dir: %s}\n", secrets)
		b.WriteString(pxe)
	} else {
		fmt.Fprintf(&b, "hosts:\n")
		for _, h := range hosts {
			fmt.Fprintf(&b, "  - name: %s\n    agent: %s\n", h.name, h.addr)
		}
	}
	b.WriteString(cluster)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write server config: %w", err)
	}
	return nil
}

// cleanups undoes, in reverse order, what the lab did.
type cleanups struct {
	steps []cleanup
}

type cleanup struct {
	what string
	fn   func() error
}

func (c *cleanups) add(what string, fn func() error) {
	c.steps = append(c.steps, cleanup{what, fn})
}

func (c *cleanups) run(logger *slog.Logger) error {
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		s := c.steps[i]
		if err := s.fn(); err != nil {
			logger.Error("lab cleanup", "step", s.what, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", s.what, err))
		}
	}
	c.steps = nil
	return errors.Join(errs...)
}

// labHostCPUs and labHostMemory are what each lab host offers guest
// clusters: room for a few 64 MiB nodes besides the lab's guests, on any
// machine (QEMU allocates a guest's memory as it touches it).
const (
	labHostCPUs   = 4
	labHostMemory = 2 << 30
)

// writeInventory writes the provisioner's inventory of the lab's hosts,
// with their BMCs (pw) when they have them. Without, the BMC block goes
// nowhere: it is there because the inventory requires one, and a host
// whose agent answers is adopted as ready.
func writeInventory(dataDir string, hosts []*host, pw *labPower) error {
	if pw == nil {
		if err := writeSecret(filepath.Join(dataDir, "bmc.password"), "unused"); err != nil {
			return err
		}
	}
	var b strings.Builder
	b.WriteString("# written by caretaker lab: its simulated hosts\nhosts:\n")
	for i, h := range hosts {
		fmt.Fprintf(&b, "  - name: %s\n    macs: [%q]\n", h.name, hostMAC(i))
		addr, pwFile := "127.0.0.1", "bmc.password"
		if pw != nil {
			addr, pwFile = pw.bmcs.Addr(h.name), filepath.Base(pw.bmcs.PasswordFile())
		}
		fmt.Fprintf(&b, "    bmc: {type: ipmi, address: %q, username: %s, password_file: %s}\n", addr, bmcUser, pwFile)
		fmt.Fprintf(&b, "    role: worker\n    agent: %s\n    cpus: %d\n    memory_bytes: %d\n", h.addr, labHostCPUs, labHostMemory)
		if h.vtep != "" {
			fmt.Fprintf(&b, "    underlay_address: %s\n", h.vtep)
		}
	}
	if err := os.WriteFile(filepath.Join(dataDir, "inventory.yml"), []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write inventory: %w", err)
	}
	return nil
}

// printFailover tells the operator how to try a failover of the lab's
// servers.
func printFailover(o Options, driver, dataDir string, ha *haLab, guests []string) {
	line := func(cmd, comment string) { fmt.Fprintf(o.Out, "  %-34s # %s\n", cmd, comment) }
	fmt.Fprintln(o.Out, "\nTry a failover:")
	line("runbook status", "the servers: who leads (now "+ha.leader+")")
	for _, s := range ha.servers {
		if s.name == ha.leader {
			line(fmt.Sprintf("kill -9 %d", s.Pid()), fmt.Sprintf("the leader, %s (each server's pid: %s)", s.name, filepath.Join(dataDir, "server-sN.pid")))
		}
	}
	if driver == "qemu" && len(guests) > 0 {
		line(fmt.Sprintf("kill -9 $(cat /run/libvirt/qemu/%s.pid)", guests[0]), "and a guest, at the same moment")
	}
	line("runbook status", fmt.Sprintf("another server leads within the lease (%s) and a second or two", o.LeaseTTL))
	line("runbook history", "exactly one restart per crash, whoever led")
	fmt.Fprintf(o.Out, "The lab starts a server that exited again after %s. kill -STOP and -CONT the leader (fenced when it wakes)\nor etcd (pid %d: no server acts, CaretakerNoLeader fires).\n",
		serverRestartDelay, ha.etcd.Pid())
}
