package console

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"caretaker/internal/api"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
)

// inventoryRow is one host of the inventory with what the server knows
// of it.
type inventoryRow struct {
	inventory.Host
	Agent *api.Host       // nil: not in the status
	Prov  *hoststate.Host // nil: not known to the provisioner
}

type hostsData struct {
	base
	ProvNote string
	Hosts    []inventoryRow
}

func (c *Console) hostsPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := ctx(r)
	defer cancel()
	d := hostsData{base: c.base(r, s, "hosts", "Hosts")}
	inv, err := c.client(r, s).Hosts(ctx)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		d.ProvNote = provNote(err)
		c.render(w, r, http.StatusOK, "hosts", d)
		return
	}
	sn := c.snapshot(ctx, r, s)
	agents := make(map[string]*api.Host, len(sn.status.Hosts))
	for i := range sn.status.Hosts {
		agents[sn.status.Hosts[i].Name] = &sn.status.Hosts[i]
	}
	if sn.provErr != nil {
		d.Notice = append(d.Notice, provNote(sn.provErr))
	}
	for _, h := range inv {
		row := inventoryRow{Host: h, Agent: agents[h.Name]}
		if p, ok := sn.states[h.Name]; ok {
			row.Prov = &p
		}
		d.Hosts = append(d.Hosts, row)
	}
	slices.SortFunc(d.Hosts, func(a, b inventoryRow) int { return cmp.Compare(a.Name, b.Name) })
	c.render(w, r, http.StatusOK, "hosts", d)
}

type hostData struct {
	base
	Name     string
	Agent    *api.Host
	Guests   guestList
	Inv      *inventory.Host
	InvNote  string
	Prov     *hoststate.Host
	ProvNote string
	History  []hoststate.Transition
	// CanProvision and CanReprovision: the host's state allows it.
	CanProvision, CanReprovision bool
	// ProvErr and Comment: a failed provision or reprovision as typed.
	ProvErr, Comment string
}

func (c *Console) hostPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showHost(w, r, s, http.StatusOK, "", "")
}

// showHost renders one host: its agent and guests, its inventory entry,
// its provisioning state and history.
func (c *Console) showHost(w http.ResponseWriter, r *http.Request, s *session, status int, provErr, comment string) {
	name := r.PathValue("name")
	ctx, cancel := ctx(r)
	defer cancel()
	d := hostData{base: c.base(r, s, "hosts", "Host "+name), Name: name, ProvErr: provErr, Comment: comment}
	d.Path = "/console/hosts/" + url.PathEscape(name)
	sn := c.snapshot(ctx, r, s)
	if sn.statusErr != nil && c.apiError(w, r, s, sn.statusErr) {
		return
	}
	for i := range sn.status.Hosts {
		if sn.status.Hosts[i].Name == name {
			h := sn.status.Hosts[i]
			d.Agent = &h
		}
	}
	d.Guests = newGuestList("Guests on "+name, "No guests reported on this host.", guestsOn(sn.status, name))
	cl := c.client(r, s)
	inv, err := cl.Host(ctx, name)
	if c.apiError(w, r, s, err) {
		return
	}
	if err == nil {
		d.Inv = &inv
	} else {
		d.InvNote = notKnown(err, "in the inventory")
	}
	ph, hist, err := cl.HostState(ctx, name)
	if c.apiError(w, r, s, err) {
		return
	}
	if err == nil {
		d.Prov, d.History = &ph, hist
		slices.Reverse(d.History) // newest first
		d.CanProvision = ph.State == hoststate.Registered || ph.State == hoststate.Failed
		d.CanReprovision = !ph.State.Transient()
	} else {
		d.ProvNote = notKnown(err, "to the provisioner")
	}
	if d.Agent == nil && d.Inv == nil && d.Prov == nil {
		c.problem(w, r, s, http.StatusNotFound, "No such host", "No agent, inventory entry or provisioning state is known for a host named "+name+".")
		return
	}
	d.Forms = (d.CanProvision || d.CanReprovision) && d.May("POST", "/api/v1/provisioner/hosts/{name}/provision")
	c.render(w, r, status, "host", d)
}

// notKnown says why a host's part is missing.
func notKnown(err error, where string) string {
	var se *api.StatusError
	switch {
	case unavailable(err):
		return provNote(err)
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return "This host is not known " + where + "."
	}
	return "Could not be read: " + errText(err)
}

// provision starts a provision or reprovision of the host of the path.
func (c *Console) provision(verb string) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, s *session) {
		name, typed := r.PathValue("name"), r.PostForm.Get("comment")
		ctx, cancel := ctx(r)
		defer cancel()
		cl := c.client(r, s)
		var h hoststate.Host
		var err error
		if verb == "provision" {
			h, err = cl.Provision(ctx, name, "", oneLine(typed))
		} else {
			h, err = cl.Reprovision(ctx, name, "", oneLine(typed))
		}
		if c.apiError(w, r, s, err) {
			return
		}
		if err != nil {
			c.showHost(w, r, s, code(err), fmt.Sprintf("Could not %s %s: %s", verb, name, errText(err)), typed)
			return
		}
		c.done(w, r, s, "/console/hosts/"+url.PathEscape(name), fmt.Sprintf("Asked to %s %s; it is now %s.", verb, name, h.State))
	}
}
