package console

import (
	"bytes"
	"html/template"
	"sync"

	"github.com/yuin/goldmark"

	"caretaker/alerts"
)

// runbooks renders the alerts' runbook pages (alerts/runbooks/*.md,
// embedded) from Markdown once each. goldmark leaves out raw HTML (it is
// not told WithUnsafe), so what it writes is safe to put in a page.
type runbooks struct {
	mu   sync.Mutex
	html map[string]template.HTML
}

// page returns the rendered runbook page of the alert, false when it has
// none.
func (rb *runbooks) page(alert string) (template.HTML, bool) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if h, ok := rb.html[alert]; ok {
		return h, true
	}
	src, err := alerts.Runbook(alert)
	if err != nil {
		return "", false
	}
	var b bytes.Buffer
	if err := goldmark.Convert(src, &b); err != nil {
		// Cannot happen with a bytes.Buffer; show the text as it is.
		b.Reset()
		template.HTMLEscape(&b, src)
		return template.HTML("<pre>" + b.String() + "</pre>"), true
	}
	if rb.html == nil {
		rb.html = map[string]template.HTML{}
	}
	rb.html[alert] = template.HTML(b.String())
	return rb.html[alert], true
}
