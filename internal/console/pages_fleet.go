package console

import (
	"cmp"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/guards"
)

// guestList is a table of guests.
type guestList struct {
	Caption string
	Empty   string // said when there are none
	Guests  []api.Guest
	More    int // rows left out
}

func newGuestList(caption, empty string, gs []api.Guest) guestList {
	l := guestList{Caption: caption, Empty: empty, Guests: gs}
	if len(gs) > maxRows {
		l.Guests, l.More = gs[:maxRows], len(gs)-maxRows
	}
	return l
}

// hostRow is one host of the fleet table, its states worked out before
// the template runs (a thousand rows).
type hostRow struct {
	api.Host
	AgentState, LibvirtState stateView
	Prov                     *stateView // nil: not known to the provisioner
	Cordoned                 bool
	VCPU, Mem                string // overcommit ratios, or "unknown"
	Alerts                   int
}

// upDown is a health flag as a state.
func upDown(up bool) stateView {
	if up {
		return tone("up")
	}
	return tone("down")
}

// alertRow is one alert as the fleet page lists it.
type alertRow struct {
	Name, State, Severity, Host, Where, Summary string
	Tone                                        stateView
	Since                                       timeView
}

func newAlertRow(a api.Alert, now time.Time) alertRow {
	l := a.Labels
	var where []string
	for _, k := range []string{"domain", "cluster"} {
		if v := l[k]; v != "" {
			where = append(where, k+" "+v)
		}
	}
	if len(where) == 0 && l["host"] == "" && l["instance"] != "" {
		where = append(where, l["instance"])
	}
	return alertRow{Name: a.Name, State: a.State, Severity: cmp.Or(l["severity"], "—"), Host: l["host"], Where: strings.Join(where, ", "),
		Summary: cmp.Or(a.Annotations["summary"], "—"), Tone: tone(a.State), Since: when(now, a.ActiveAt)}
}

type fleetCounts struct {
	Hosts, AgentDown, LibvirtDown, Guests, Running, NotMeant, Firing, Pending int
}

// runbookView is an alert's runbook page.
type runbookView struct {
	Name string
	HTML template.HTML
}

type fleetData struct {
	base
	StatusErr  string
	Counts     fleetCounts
	Hosts      []hostRow
	Breaker    string
	Pauses     []guards.Pause
	PauseErr   string
	ProvNote   string
	Alerts     []alertRow
	AlertsMore int
	Runbooks   []runbookView
	NotMeant   guestList
	// Host and HostGuests: ?host=NAME's guests.
	Host       string
	HostGuests *guestList
}

func (c *Console) fleetPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := ctx(r)
	defer cancel()
	sn := c.snapshot(ctx, r, s)
	if sn.statusErr != nil && c.apiError(w, r, s, sn.statusErr) {
		return
	}
	d := fleetData{base: c.base(r, s, "fleet", "Fleet"), Breaker: sn.breaker, Pauses: sn.pauses}
	if sn.statusErr != nil {
		d.StatusErr = "The fleet's status could not be read: " + errText(sn.statusErr)
	}
	if sn.pauseErr != nil {
		d.PauseErr = "The pauses could not be read: " + errText(sn.pauseErr)
	}
	d.ProvNote = provNote(sn.provErr)
	st := sn.status
	perHost := map[string]int{}
	for _, a := range st.Alerts {
		if h := a.Labels["host"]; h != "" {
			perHost[h]++
		}
		if a.State == "firing" {
			d.Counts.Firing++
		} else {
			d.Counts.Pending++
		}
	}
	d.Hosts = make([]hostRow, 0, len(st.Hosts))
	for _, h := range st.Hosts {
		row := hostRow{Host: h, AgentState: upDown(h.AgentUp), LibvirtState: upDown(h.LibvirtUp),
			VCPU: ratio(sn.vcpu, h.Name), Mem: ratio(sn.mem, h.Name), Alerts: perHost[h.Name]}
		if p, ok := sn.states[h.Name]; ok {
			t := tone(p.State)
			row.Prov, row.Cordoned = &t, p.Cordoned
		}
		d.Hosts = append(d.Hosts, row)
		if !h.AgentUp {
			d.Counts.AgentDown++
		}
		if !h.LibvirtUp {
			d.Counts.LibvirtDown++
		}
	}
	d.Counts.Hosts, d.Counts.Guests, d.Counts.NotMeant = len(st.Hosts), len(st.Guests), len(sn.notMeant)
	for _, g := range st.Guests {
		if g.State == "running" {
			d.Counts.Running++
		}
	}
	alerts, more := sortedAlerts(st.Alerts)
	d.AlertsMore = more
	for _, a := range alerts {
		d.Alerts = append(d.Alerts, newAlertRow(a, d.Now))
	}
	d.Runbooks = c.runbooksOf(alerts)
	d.NotMeant = newGuestList("Guests meant to run that do not run, across the fleet", "Every guest meant to run is running.", sn.notMeant)
	if name := r.URL.Query().Get("host"); name != "" {
		d.Host = name
		gl := newGuestList("Guests on "+name, "No guests reported on this host.", guestsOn(st, name))
		d.HostGuests = &gl
	}
	c.render(w, r, http.StatusOK, "fleet", d)
}

// provNote says why the provisioner's part of a page is missing, or "".
func provNote(err error) string {
	switch {
	case err == nil:
		return ""
	case unavailable(err):
		return "The provisioner does not run on this server, so there are no provisioning states, guest clusters or inventory here (the API answered: " + errText(err) + ")."
	}
	return "The hosts' provisioning states could not be read: " + errText(err)
}

// guestsOn returns the guests of one host, by domain name.
func guestsOn(st api.Status, host string) []api.Guest {
	var out []api.Guest
	for _, g := range st.Guests {
		if g.Host == host {
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(a, b api.Guest) int { return cmp.Or(cmp.Compare(a.Domain, b.Domain), cmp.Compare(a.UUID, b.UUID)) })
	return out
}

// sortedAlerts orders alerts firing first, then by name and age, and
// keeps at most maxRows.
func sortedAlerts(as []api.Alert) ([]api.Alert, int) {
	out := slices.Clone(as)
	rank := func(a api.Alert) int {
		if a.State == "firing" {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(out, func(a, b api.Alert) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a.Name, b.Name), a.ActiveAt.Compare(b.ActiveAt),
			cmp.Compare(labelText(a.Labels), labelText(b.Labels)))
	})
	if len(out) > maxRows {
		return out[:maxRows], len(out) - maxRows
	}
	return out, 0
}

// runbooksOf returns the runbook page of each alert name in as, once.
func (c *Console) runbooksOf(as []api.Alert) []runbookView {
	var out []runbookView
	seen := map[string]bool{}
	for _, a := range as {
		if seen[a.Name] {
			continue
		}
		seen[a.Name] = true
		if h, ok := c.runbooks.page(a.Name); ok {
			out = append(out, runbookView{Name: a.Name, HTML: h})
		}
	}
	slices.SortFunc(out, func(a, b runbookView) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

type runbookData struct {
	base
	Runbook runbookView
}

func (c *Console) runbookPage(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("alert")
	h, ok := c.runbooks.page(name)
	if !ok {
		c.problem(w, r, s, http.StatusNotFound, "No runbook", "There is no runbook page for an alert named "+name+".")
		return
	}
	d := runbookData{base: c.base(r, s, "fleet", "Runbook: "+name), Runbook: runbookView{Name: name, HTML: h}}
	c.render(w, r, http.StatusOK, "runbook", d)
}
