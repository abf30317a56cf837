package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"caretaker/internal/api"
	"caretaker/provisioner/hoststate"
	"caretaker/remediation/guards"
)

// snapshot is the fleet as the fleet and host pages show it, read once per
// statusTTL and shared by every user: everything in it is a viewer's to
// read.
type snapshot struct {
	at        time.Time
	status    api.Status
	statusErr error
	// notMeant are the guests meant to run that do not, across the fleet.
	notMeant []api.Guest
	pauses   []guards.Pause
	pauseErr error
	// states are the hosts' provisioning states; provErr says why there
	// are none (no provisioner on this server: unavailable(provErr)).
	states  map[string]hoststate.Host
	provErr error
	// breaker is "open", "closed" or "" (unknown: no query API).
	breaker string
	// vcpu and mem are the hosts' overcommit ratios; nil when unknown.
	vcpu, mem map[string]float64
	// digest sums it for the event stream, once it is asked for.
	digest func() string
}

// snapshotCache keeps the last snapshot for statusTTL.
type snapshotCache struct {
	mu   sync.Mutex
	last *snapshot
}

// snapshot returns the fleet's snapshot, read with the session's token
// when the last one is older than statusTTL.
func (c *Console) snapshot(ctx context.Context, r *http.Request, s *session) *snapshot {
	c.snap.mu.Lock()
	defer c.snap.mu.Unlock()
	now := c.o.Now()
	if l := c.snap.last; l != nil && c.statusTTL > 0 && now.Sub(l.at) < c.statusTTL && now.Sub(l.at) >= 0 {
		return l
	}
	sn := c.readSnapshot(ctx, r, s, now)
	if sn.statusErr == nil {
		c.snap.last = sn
	}
	return sn
}

func (c *Console) readSnapshot(ctx context.Context, r *http.Request, s *session, now time.Time) *snapshot {
	sn := &snapshot{at: now}
	cl := c.client(r, s)
	var wg sync.WaitGroup
	wg.Go(func() {
		if c.o.Status != nil {
			sn.status, sn.statusErr = c.o.Status(ctx)
		} else {
			sn.status, sn.statusErr = cl.Status(ctx)
		}
	})
	wg.Go(func() { sn.pauses, sn.pauseErr = cl.Pauses(ctx) })
	wg.Go(func() {
		hs, err := cl.HostStates(ctx)
		sn.provErr = err
		sn.states = make(map[string]hoststate.Host, len(hs))
		for _, h := range hs {
			sn.states[h.Name] = h
		}
	})
	wg.Go(func() {
		if b, err := c.queryByHost(ctx, r, s.token, "max(caretaker_remediation_circuit_breaker_open)"); err == nil {
			sn.breaker = "closed"
			if b[""] > 0 {
				sn.breaker = "open"
			}
		}
	})
	wg.Go(func() {
		if m, err := c.queryByHost(ctx, r, s.token, "caretaker_host_vcpu_overcommit_ratio"); err == nil {
			sn.vcpu = m
		}
	})
	wg.Go(func() {
		if m, err := c.queryByHost(ctx, r, s.token, "caretaker_host_memory_overcommit_ratio"); err == nil {
			sn.mem = m
		}
	})
	wg.Wait()
	for _, g := range sn.status.Guests {
		if notAsMeant(g) {
			sn.notMeant = append(sn.notMeant, g)
		}
	}
	slices.SortFunc(sn.notMeant, func(a, b api.Guest) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Domain, b.Domain), cmp.Compare(a.UUID, b.UUID))
	})
	sn.digest = sync.OnceValue(sn.sum)
	return sn
}

// notAsMeant tells whether g is meant to run and does not.
func notAsMeant(g api.Guest) bool { return g.IntendedRunning && g.State != "running" }

// sum digests what the fleet and host pages show.
func (sn *snapshot) sum() string {
	h := sha256.New()
	str := func(ss ...string) {
		for _, s := range ss {
			writeLen(h, len(s))
			h.Write([]byte(s))
		}
	}
	flag := func(b bool) {
		if b {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
	}
	if sn.statusErr != nil {
		str("status error", sn.statusErr.Error())
	}
	for _, x := range sn.status.Hosts {
		str(x.Name, x.Agent)
		flag(x.AgentUp)
		flag(x.LibvirtUp)
		writeLen(h, x.Guests)
	}
	for _, g := range sn.status.Guests {
		str(g.Host, g.UUID, g.Domain, g.Cluster, g.Role, g.State, g.Reason)
		flag(g.IntendedRunning)
	}
	for _, a := range sn.status.Alerts {
		str(a.Name, a.State, a.ActiveAt.String())
		keys := make([]string, 0, len(a.Labels))
		for k := range a.Labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			str(k, a.Labels[k])
		}
	}
	for _, p := range sn.pauses {
		str(p.Target, p.Author, p.Comment, p.Until.String())
	}
	names := make([]string, 0, len(sn.states))
	for n := range sn.states {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		x := sn.states[n]
		str(n, string(x.State), x.Since.String(), x.LastError, strconv.Itoa(x.Attempt))
		flag(x.Cordoned)
	}
	str("breaker", sn.breaker)
	for _, m := range []map[string]float64{sn.vcpu, sn.mem} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			str(k, strconv.FormatFloat(m[k], 'f', 2, 64))
		}
		str("|")
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func writeLen(h hash.Hash, n int) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}
