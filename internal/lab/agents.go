package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"caretaker/internal/agent"
)

// hostAgent is the agent of one lab host, which the lab can stop and start
// again as a host's service manager would (agent-kill, power loss).
type hostAgent struct {
	cfg     agent.Config
	addr    string // where it listens, the same after a restart
	handler func(http.Handler) http.Handler
	// filter, when set, gives the DomainFilter of each start.
	filter func() *regexp.Regexp
	listen func(addr string) (net.Listener, error)

	mu     sync.Mutex
	stopFn func()
	done   chan struct{}
	a      *agent.Agent
}

// labOverlays are the lab's own guest clusters with their VNIs, below the
// server's range (clusters.DefaultVNIs) so that they never meet.
var labOverlays = []struct {
	cluster string
	vni     int
}{{"lab", 100}, {"lab-b", 101}}

// startAgent starts the agent of h on an address of its own, and sets
// h.addr and h.agent.
func (r *labRun) startAgent(ctx context.Context, h *host, token string) error {
	cfg := agent.Config{
		LibvirtURI:    h.uri,
		DomainFilter:  h.filter,
		Token:         token,
		ScrapeTimeout: 5 * time.Second,
		// The lab's guests are TCG (or the test driver's) by choice:
		// its hosts need no /dev/kvm (caretaker_host_kvm_required 0),
		// so HostKVMDeviceMissing does not page for the lab.
		GuestDomainType: "qemu",
		// The highest leader epoch it has seen (with several servers),
		// kept across the lab's runs on a kept --data.dir, as etcd's is.
		StateDir: filepath.Join(r.dataDir, "agent-"+h.name),
		Logger:   r.o.Logger.With("host", h.name),
	}
	ha := &hostAgent{handler: func(h http.Handler) http.Handler { return h },
		listen: func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }}
	ip := "127.0.0.1"
	if r.net != nil {
		// The agent listens on the host's management address, in its
		// namespace.
		hn := r.net.host(h.name)
		ip = hn.mgmt.String()
		cfg.NetNS = h.netns
		for _, lo := range labOverlays {
			o := r.net.labOverlay(lo.cluster, lo.vni, hn)
			cfg.Overlays = append(cfg.Overlays, o)
			cfg.OverlayRepairs = append(cfg.OverlayRepairs, o)
		}
		ha.listen = func(addr string) (net.Listener, error) { return r.net.listen(hn, addr) }
	}
	if r.cl != nil {
		cfg.GuestPool = r.cl.pool
		ha.handler = func(a http.Handler) http.Handler { return r.cl.wrap(h.name, a) }
	}
	webConfig, err := r.tls.agentWebConfig(h.name, ip)
	if err != nil {
		return err
	}
	cfg.WebConfigFile = webConfig
	ha.cfg, ha.addr = cfg, net.JoinHostPort(ip, "0")
	if r.cl != nil {
		// A restarted agent owns the nodes PUT to it before, as one
		// on a host of its own would find them in its libvirtd.
		ha.filter = func() *regexp.Regexp {
			alts := []string{h.filter.String()}
			for _, n := range r.cl.hostNodes(h.name) {
				alts = append(alts, "^"+regexp.QuoteMeta(n)+"$")
			}
			return regexp.MustCompile(strings.Join(alts, "|"))
		}
	}
	if err := ha.start(ctx); err != nil {
		return fmt.Errorf("agent of %s: %w", h.name, err)
	}
	h.addr, h.agent = ha.addr, ha
	return nil
}

// start starts the agent, a new one as a restarted process is, unless it
// runs; the first start picks the port it keeps.
func (ha *hostAgent) start(ctx context.Context) error {
	ha.mu.Lock()
	defer ha.mu.Unlock()
	if ha.stopFn != nil {
		return nil
	}
	cfg := ha.cfg
	if ha.filter != nil {
		cfg.DomainFilter = ha.filter()
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	l, err := ha.listen(ha.addr)
	if err != nil {
		a.Close()
		return fmt.Errorf("listen on %s: %w", ha.addr, err)
	}
	ha.addr = l.Addr().String()
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Start(actx)
		if err := serveTLS(actx, l, ha.handler(a.Handler()), ha.cfg.WebConfigFile, ha.cfg.Logger); err != nil {
			ha.cfg.Logger.Error("agent stopped", "err", err)
		}
	}()
	ha.a, ha.stopFn, ha.done = a, stop, done
	return nil
}

// stop stops the agent if it runs.
func (ha *hostAgent) stop() error {
	ha.mu.Lock()
	defer ha.mu.Unlock()
	if ha.stopFn == nil {
		return nil
	}
	ha.stopFn()
	<-ha.done
	err := ha.a.Close()
	ha.stopFn, ha.a = nil, nil
	return err
}
