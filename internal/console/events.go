package console

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"caretaker/internal/api"
	"caretaker/provisioner/clusters"
	"caretaker/remediation/journal"
)

// keepaliveEvery is how many quiet ticks pass between comments that keep
// the stream's connection open through proxies.
const keepaliveEvery = 15

// events streams server-sent events about the page ?page= names: "hello"
// at once, "change" when what the page shows changed since the last
// digest, "signedout" when the session ended.
func (c *Console) events(w http.ResponseWriter, r *http.Request, s *session) {
	page := localNext(r.URL.Query().Get("page"))
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // the stream outlives the server's write timeout
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event, data string) bool {
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	fmt.Fprint(w, "retry: 5000\n\n")
	last, ended := c.digest(r, s, page)
	if ended {
		send("signedout", "")
		return
	}
	if !send("hello", last) {
		return
	}
	ticks, stop := c.ticks()
	defer stop()
	quiet := 0
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ticks:
		}
		if !c.sessions.alive(s, c.o.Now()) {
			send("signedout", "")
			return
		}
		d, ended := c.digest(r, s, page)
		if ended {
			send("signedout", "")
			return
		}
		if d != last {
			last, quiet = d, 0
			if !send("change", d) {
				return
			}
			continue
		}
		if quiet++; quiet%keepaliveEvery == 0 {
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

// digest sums what page shows now; ended reports that the API no longer
// takes the session's token (the session is then removed).
func (c *Console) digest(r *http.Request, s *session, page string) (sum string, ended bool) {
	u, err := url.Parse(page)
	if err != nil {
		return "", false
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	cl := c.client(r, s)
	var parts []any
	add := func(v any, err error) {
		if err != nil {
			var se *api.StatusError
			if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
				ended = true
			}
			parts = append(parts, "error", errText(err))
			return
		}
		parts = append(parts, v)
	}
	p := u.Path
	switch {
	case p == "/console/" || p == "/console/hosts":
		parts = append(parts, c.snapshot(ctx, r, s).digest())
	case strings.HasPrefix(p, "/console/hosts/"):
		name, _ := url.PathUnescape(strings.TrimPrefix(p, "/console/hosts/"))
		parts = append(parts, c.snapshot(ctx, r, s).digest())
		h, hist, err := cl.HostState(ctx, name)
		add([]any{h, len(hist)}, err)
	case p == "/console/remediation":
		_, f, ferr := journalFilterFrom(u.Query(), c.o.Now())
		if ferr == nil {
			h, err := cl.History(ctx, f)
			add(journalDigest(h.Records), err)
		}
		ap, err := cl.Actions(ctx, api.HistoryFilter{Limit: 1000, States: []journal.State{journal.StateAwaitingApproval}})
		add(journalDigest(ap.Records), err)
		add(cl.Pauses(ctx))
	case strings.HasPrefix(p, "/console/actions/"):
		id, _ := strconv.ParseUint(strings.TrimPrefix(p, "/console/actions/"), 10, 64)
		rec, err := cl.Record(ctx, id)
		add(rec, err)
	case p == "/console/clusters":
		cs, err := cl.Clusters(ctx)
		var sums []any
		for _, x := range cs {
			sums = append(sums, clusterDigest(x))
		}
		add(sums, err)
	case strings.HasPrefix(p, "/console/clusters/"):
		name, _ := url.PathUnescape(strings.TrimPrefix(p, "/console/clusters/"))
		x, err := cl.Cluster(ctx, name)
		add(clusterDigest(x), err)
	default:
		return "", false
	}
	if ended {
		c.sessions.remove(s)
	}
	return hashJSON(parts), ended
}

// journalDigest is what a list of records shows that changes.
func journalDigest(recs []journal.Record) []any {
	out := make([]any, 0, len(recs))
	for _, r := range recs {
		out = append(out, []any{r.ID, r.State, len(r.Transitions), r.Approval != nil && r.Approval.State != "pending"})
	}
	return out
}

// clusterDigest is what the cluster pages show of a cluster, without its
// times (the reconciler touches Updated without a change to show).
func clusterDigest(c clusters.Cluster) []any {
	out := []any{c.Name, c.Phase, c.VNI, c.Pools, c.ChangedBy != nil}
	for _, n := range c.Nodes {
		out = append(out, n.Name, n.Host, n.State, n.Error)
	}
	return append(out, c.Overlays) // a map: its JSON is in key order
}

// hashJSON sums v's JSON (maps are written in key order).
func hashJSON(v any) string {
	b, _ := json.Marshal(v)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}
