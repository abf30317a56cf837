package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/httpjson"
	"caretaker/internal/kv"
	"caretaker/internal/leader"
	"caretaker/provisioner/fleet"
	"caretaker/remediation"
	"caretaker/remediation/intake"
	"caretaker/remediation/journal"
)

// cluster is a clustered server's part: etcd, the shared state in it, the
// election, and what acts while this server leads.
type cluster struct {
	cfg     config.Cluster
	client  *clientv3.Client
	store   *kv.Etcd // unfenced: reads, and the webhook inbox any server writes
	elector *leader.Elector
	// acting is the current term's, nil while another server leads.
	acting atomic.Pointer[acting]
	proxy  *httputil.ReverseProxy
	// forward is proxy behind this server's own authentication: a
	// request reaches the leader only with a known token, and failed ones
	// are counted here, against their client, not against this server at
	// the leader.
	forward http.Handler
	// local are the Prometheus query API's paths, which every server
	// answers from its own TSDB.
	local map[string]bool
}

// acting is what acts during one term: the engine and the provisioner,
// and the routes that reach them.
type acting struct {
	epoch   int64
	engine  *remediation.Engine
	prov    *fleet.Provisioner // nil without a provisioner
	handler http.Handler
	reg     *termRegisterer // their metrics
}

// forwardedHeader marks a request a follower forwarded: the leader serves
// it, and a server that is not (any more) the leader refuses it rather
// than sending it on again.
const forwardedHeader = "Caretaker-Forwarded-By"

// openCluster connects to etcd and opens the shared state in it.
func (s *Server) openCluster(in inputs) error {
	cc := in.cfg.Cluster
	client, err := newEtcdClient(in.cfg)
	if err != nil {
		return err
	}
	c := &cluster{cfg: cc, client: client}
	s.cluster = c
	c.store = kv.NewEtcd(client, kv.EtcdOptions{Prefix: cc.Etcd.Prefix, Timeout: cc.LeaseTTL})
	c.elector, err = leader.New(leader.Options{Client: client, Prefix: cc.Etcd.Prefix, Name: cc.Name, Address: cc.AdvertiseURL,
		TTL: cc.LeaseTTL, Logger: s.logger.With("component", "cluster"), Registerer: s.reg})
	if err != nil {
		return err
	}
	if c.proxy, err = leaderProxy(in.cfg, c, s.logger); err != nil {
		return err
	}
	if s.journal, err = journal.New(c.store); err != nil {
		return err
	}
	s.inbox, err = intake.New(c.store)
	return err
}

// newEtcdClient connects to cluster.etcd and checks that it answers.
func newEtcdClient(cfg *config.Server) (*clientv3.Client, error) {
	cc := cfg.Cluster
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return nil, err
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cc.Etcd.Endpoints,
		DialTimeout: cc.Etcd.DialTimeout,
		TLS:         tlsCfg,
		// etcd's client logs every retry at warn through zap; the
		// server says what matters (lost lead, etcd unreachable) itself.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster.etcd: %w", err)
	}
	// The first read says at once whether etcd answers at all.
	ctx, cancel := context.WithTimeout(context.Background(), cc.Etcd.DialTimeout)
	defer cancel()
	if _, err := client.Get(ctx, cc.Etcd.Prefix+"members/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		client.Close()
		return nil, fmt.Errorf("cluster.etcd.endpoints %v: etcd does not answer: %w", cc.Etcd.Endpoints, err)
	}
	return client, nil
}

// stateFiles are a single server's bbolt files, under its data directory.
var stateFiles = []string{"journal.db", "inbox.db", "provisioner/provisioner.db", "provisioner/hosts.db"}

// ImportState copies a single server's state — journal, webhook inbox,
// inventory, host states, guest clusters — from the bbolt files of
// fromDir into the etcd of cfg's cluster section, and says what it copied
// on out. The prefix must be empty: importing twice, or into a running
// cluster, would mix two histories. The single server must be stopped
// (its files are locked while it runs).
func ImportState(cfg *config.Server, fromDir string, out io.Writer) error {
	if !cfg.Cluster.Enabled() {
		return errors.New("the configuration has no cluster section: nowhere to import to")
	}
	client, err := newEtcdClient(cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	dst := kv.NewEtcd(client, kv.EtcdOptions{Prefix: cfg.Cluster.Etcd.Prefix})
	empty, err := dst.Empty()
	if err != nil {
		return err
	}
	if !empty {
		return fmt.Errorf("etcd already holds caretaker state under %s: import only into an empty prefix, before the servers start", cfg.Cluster.Etcd.Prefix)
	}
	found := 0
	for _, name := range stateFiles {
		path := filepath.Join(fromDir, name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(out, "%s: none\n", path)
			continue
		}
		src, err := kv.OpenBolt(path, "state file")
		if err != nil {
			return err
		}
		n, err := kv.CopyBolt(dst, src)
		src.Close()
		if err != nil {
			return err
		}
		found++
		fmt.Fprintf(out, "%s: %d keys copied\n", path, n)
	}
	if found == 0 {
		return fmt.Errorf("%s holds none of a server's state files (%s)", fromDir, strings.Join(stateFiles, ", "))
	}
	return nil
}

func etcdTLS(cfg *config.Server) (*tls.Config, error) {
	t := cfg.Cluster.Etcd.TLS
	if !t.Enabled() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pool, err := readCA(cfg.Path(t.CAFile))
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file: %w", err)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Path(t.CertFile), cfg.Path(t.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func readCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// leaderProxy forwards a request to the leader's advertised URL.
func leaderProxy(cfg *config.Server, c *cluster, logger *slog.Logger) (*httputil.ReverseProxy, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if f := cfg.Cluster.PeerCAFile; f != "" {
		pool, err := readCA(cfg.Path(f))
		if err != nil {
			return nil, fmt.Errorf("cluster.peer_ca_file: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(r *httputil.ProxyRequest) {
			l, _ := c.elector.Leader()
			u, _ := url.Parse(l.Address)
			r.SetURL(u)
			r.SetXForwarded()
			r.Out.Header.Set(forwardedHeader, c.cfg.Name)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			logger.Warn("the leader did not answer a forwarded request", "path", r.URL.Path, "err", err)
			w.Header().Set("Retry-After", "2")
			httpjson.Indented.Error(w, http.StatusBadGateway, "forwarding to the leader failed: "+err.Error()+"; try again in a few seconds")
		},
	}, nil
}

// serveHTTP sends a request where it is served: the current term's routes
// while this server leads; else the local routes for what any server
// answers from the shared state or its own TSDB, and the leader for the
// rest (changes, and what lives in the leader's memory).
func (c *cluster) serveHTTP(base http.Handler, w http.ResponseWriter, r *http.Request) {
	if a := c.acting.Load(); a != nil {
		a.handler.ServeHTTP(w, r)
		return
	}
	if c.servesLocally(r) {
		base.ServeHTTP(w, r)
		return
	}
	l, ok := c.elector.Leader()
	switch {
	case r.Header.Get(forwardedHeader) != "":
		w.Header().Set("Retry-After", "2")
		httpjson.Indented.Error(w, http.StatusServiceUnavailable, fmt.Sprintf("server %s was sent a request for the leader, and no longer leads; try again in a few seconds", c.cfg.Name))
	case ok && l.Name == c.cfg.Name:
		w.Header().Set("Retry-After", "1")
		httpjson.Indented.Error(w, http.StatusServiceUnavailable, fmt.Sprintf("server %s has just taken the lead and is starting its engine: try again in a second", c.cfg.Name))
	case !ok || l.Address == "":
		w.Header().Set("Retry-After", "2")
		httpjson.Indented.Error(w, http.StatusServiceUnavailable, "no server leads the cluster now (is etcd reachable?); changes wait for a leader: try again in a few seconds")
	case strings.HasPrefix(r.URL.Path, "/pxe/"):
		c.proxy.ServeHTTP(w, r) // booting hosts have no token (PXE trust model)
	default:
		c.forward.ServeHTTP(w, r)
	}
}

// servesLocally says which requests a follower answers itself: anything
// outside the API, the webhook (its deliveries go into the shared inbox,
// which the leader drains), and the reads of the shared state and of the
// server's own TSDB.
func (c *cluster) servesLocally(r *http.Request) bool {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/api/v1/") {
		return !strings.HasPrefix(p, "/pxe/")
	}
	if p == intake.Path {
		return true
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if c.local[p] {
		return true
	}
	for _, prefix := range []string{"/api/v1/status", "/api/v1/servers", "/api/v1/history", "/api/v1/actions", "/api/v1/clusters", "/api/v1/hosts", "/api/v1/policy"} {
		if p == prefix || strings.HasPrefix(p, prefix+"/") {
			return true
		}
	}
	return false
}

// lead is one term of this server's leadership: it builds the engine and
// the provisioner on the fenced store, tells the agents the new epoch,
// drains the shared inbox and acts until the term ends.
func (s *Server) lead(ctx context.Context, t *leader.Term) {
	c := s.cluster
	log := s.logger.With("component", "cluster", "epoch", t.Epoch)
	// The agents learn the epoch first: the new engine reconciles the
	// actions left open as soon as it is made, and its requests must
	// carry the term's epoch.
	s.agents.SetEpoch(t.Epoch)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	for host, err := range s.agents.Announce(actx) {
		log.Warn("could not tell an agent the new epoch", "host", host, "err", err)
	}
	cancel()
	var a *acting
	for a == nil {
		var err error
		if a, err = s.newActing(ctx, t); err != nil {
			log.Error("this server leads but cannot act yet", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
	c.acting.Store(a)
	log.Info("acting: the engine and the provisioner run on this server")

	var wg sync.WaitGroup
	if a.prov != nil {
		wg.Go(func() { a.prov.Run(ctx) })
	}
	wg.Go(func() { s.drainInbox(ctx, a.engine) })
	if s.events != nil {
		wg.Go(func() { s.events.Run(ctx, a.engine.Handle) })
	}
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-tick.C:
			a.engine.Tick(now)
		}
	}
	c.acting.CompareAndSwap(a, nil)
	wg.Wait()
	// A server that no longer leads exports no figures of its last term
	// (a given-up count would page on from it); done before lead returns,
	// so before a next term registers its own.
	a.reg.unregisterAll()
	// Actions in flight finish on their own; their records can no longer
	// be written (the store is fenced), and the next leader reconciles
	// them. Closing waits for them, so it runs apart from the election.
	s.bg.Go(func() {
		a.engine.Close()
		if a.prov != nil {
			a.prov.Close()
		}
	})
}

// newActing builds a term's engine and provisioner on the store fenced by
// the term: their writes, intents first, fail once the term is over.
func (s *Server) newActing(ctx context.Context, t *leader.Term) (*acting, error) {
	c := s.cluster
	fenced := c.store.Fenced(c.elector.Fence(t))
	j, err := journal.New(fenced)
	if err != nil {
		return nil, err
	}
	if s.audit != nil {
		j.OnRecord(s.audit.Log)
	}
	a := &acting{epoch: t.Epoch, reg: &termRegisterer{Registerer: s.reg}}
	if s.in.cfg.Provisioner.Enabled() {
		if a.prov, err = s.newProvisioner(fenced, a.reg, false); err != nil {
			a.reg.unregisterAll()
			return nil, err
		}
	}
	if a.engine, err = s.newEngine(j, a.prov, a.reg, func() bool { return c.elector.Valid(t.Epoch) }); err != nil {
		if a.prov != nil {
			a.prov.Close()
		}
		a.reg.unregisterAll()
		return nil, err
	}
	a.handler = s.mux(a.engine, a.prov)
	return a, nil
}

// drainEvery is how often the leader hands the engine what the webhook
// stored on any server.
const drainEvery = time.Second

func (s *Server) drainInbox(ctx context.Context, e *remediation.Engine) {
	t := time.NewTicker(drainEvery)
	defer t.Stop()
	for {
		if _, err := s.inbox.Replay(ctx, e.Handle); err != nil && ctx.Err() == nil && !errors.Is(err, kv.ErrNotLeader) {
			s.logger.Warn("could not drain the webhook inbox", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Servers lists the cluster's servers for GET /api/v1/servers.
func (c *cluster) Servers(ctx context.Context) ([]api.ServerStatus, error) {
	ss, err := c.elector.Servers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.ServerStatus, len(ss))
	for i, s := range ss {
		out[i] = api.ServerStatus{Name: s.Name, Address: s.Address, Leader: s.Leader, Epoch: s.Epoch, Healthy: s.Healthy}
	}
	return out, nil
}

// termRegisterer registers the metrics of one term's engine and
// provisioner, and unregisters them when the term ends: each term
// registers the same metrics anew, and only the leader exports them.
type termRegisterer struct {
	prometheus.Registerer
	mu         sync.Mutex
	registered []prometheus.Collector
}

func (r *termRegisterer) Register(c prometheus.Collector) error {
	err := r.Registerer.Register(c)
	if err == nil {
		r.mu.Lock()
		r.registered = append(r.registered, c)
		r.mu.Unlock()
	}
	return err
}

func (r *termRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *termRegisterer) unregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.registered {
		r.Registerer.Unregister(c)
	}
	r.registered = nil
}
