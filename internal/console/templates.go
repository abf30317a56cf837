package console

import (
	"fmt"
	"html/template"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"caretaker/provisioner/hoststate"
	"caretaker/remediation/journal"
)

// pageNames are the pages; each is templates/<name>.html (defining
// "content") with templates/layout.html around it.
var pageNames = []string{"signin", "problem", "fleet", "host", "runbook", "remediation", "record", "clusters", "cluster", "hosts"}

func (c *Console) parseTemplates() map[string]*template.Template {
	funcs := template.FuncMap{
		"asset":  c.asset,
		"when":   when,
		"tone":   tone,
		"mark":   mark,
		"iec":    iec,
		"ratio":  ratio,
		"labels": labelText,
		"join":   strings.Join,
		"add":    func(a, b int) int { return a + b },
		"dict":   dict,
		"steps":  steps,
	}
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		t := template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
		out[name] = t
	}
	return out
}

// asset is the URL of a static file, versioned by its content.
func (c *Console) asset(name string) string {
	return "/console/static/" + name + "?v=" + c.assets[name]
}

// timeView is a time as the pages show it: relative to the page's now,
// with the absolute time in the element's datetime and title.
type timeView struct {
	Zero     bool
	ISO, Abs string
	Rel      string
}

// when describes t as seen at now.
func when(now, t time.Time) timeView {
	if t.IsZero() {
		return timeView{Zero: true}
	}
	return timeView{ISO: t.UTC().Format(time.RFC3339), Abs: t.UTC().Format("2006-01-02 15:04:05 MST"), Rel: relative(now, t)}
}

// relative says how long ago (or from now) t is, roughly: "12 s ago",
// "3 min ago", "in 2 h", "5 d ago".
func relative(now, t time.Time) string {
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 2*time.Second:
		return "just now"
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d.Hours()))
	default:
		s = fmt.Sprintf("%d d", int(d.Hours()/24))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// stateView is a state as the pages show it: its word, always, with an
// icon and a colour class besides.
type stateView struct {
	Text, Class, Icon string
}

// tones sorts the states of guests, records, nodes, hosts, clusters,
// alerts and guards into good, in progress, bad and inert.
var tones = func() map[string]string {
	m := map[string]string{}
	for tone, states := range map[string][]string{
		"ok": {"running", "succeeded", "ready", "allow", "approved", "up", "closed", "yes", "fits"},
		"warn": {"pending", "awaiting_approval", "verifying", "creating", "powering-on", "pxe-booting", "installing",
			"paused", "wait", "deleting", "blocked", "in shutdown", "pmsuspended"},
		"bad": {"failed", "crashed", "shut off", "shutoff", "degraded", "firing", "down", "open", "interrupted",
			"escalate", "denied", "no", "does not fit"},
		"muted": {"skipped", "cancelled", "expired", "registered", "unknown", "skip", "off"},
	} {
		for _, s := range states {
			m[s] = tone
		}
	}
	return m
}()

var icons = map[string]string{"ok": "✔", "warn": "◷", "bad": "✖", "muted": "○", "info": "•"}

// tone describes a state; v is any string-like state. A journal record
// still open (running, verifying) is in progress, not good.
func tone(v any) stateView {
	s := fmt.Sprint(v)
	if s == "" {
		s = "unknown"
	}
	cl, ok := tones[s]
	if !ok {
		cl = "info"
	}
	if st, ok := v.(journal.State); ok && st.Open() {
		cl = "warn"
	}
	return stateView{Text: s, Class: cl, Icon: icons[cl]}
}

// mark shows text with the icon and colour of a tone (ok, warn, bad,
// muted, info).
func mark(class, text string) stateView {
	return stateView{Text: text, Class: class, Icon: icons[class]}
}

// iec writes a byte count in binary units: "2 GiB", "512 MiB".
func iec(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == math.Trunc(f) {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// ratio writes an overcommit ratio of m's host, or "unknown".
func ratio(m map[string]float64, host string) string {
	v, ok := m[host]
	if !ok {
		return "unknown"
	}
	return fmt.Sprintf("%.2f", v)
}

// labelText writes labels as k=v, sorted by name.
func labelText(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ", ")
}

// dict makes a map of name, value pairs, to hand a partial template more
// than one value.
func dict(kv ...any) map[string]any {
	m := make(map[string]any, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[fmt.Sprint(kv[i])] = kv[i+1]
	}
	return m
}

// step is one state of a host's provisioning, as a list shows them.
type step struct {
	Name    string
	Current bool
}

// steps lists the provisioning states in order, marking cur.
func steps(cur hoststate.State) []step {
	var out []step
	for _, s := range hoststate.States() {
		if s == hoststate.Failed && cur != hoststate.Failed {
			continue
		}
		out = append(out, step{Name: string(s), Current: s == cur})
	}
	return out
}
