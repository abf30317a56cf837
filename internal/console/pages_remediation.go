package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// journalLimits are the page sizes "show more" steps through, up to the
// API's largest.
var journalLimits = []int{50, 200, 1000, 10000}

// journalFilter is the journal's filter form, as typed.
type journalFilter struct {
	Target, Action, Result, Since string
	Limit                         int
}

// pauseForm is the create-pause form, as typed, with the API's refusal.
type pauseForm struct {
	Target, Duration, Comment, Error string
}

type remediationData struct {
	base
	Filter      journalFilter
	FilterErr   string
	ActionNames []string
	States      []journal.State
	Records     []journal.Record
	MoreURL     string // the journal with a larger limit, "" at the end
	Approvals   []journal.Record
	Pauses      []guards.Pause
	PauseForm   pauseForm
	EndErr      string
	// Decision is a failed approve or deny of one of Approvals.
	Decision decisionForm
}

// decisionForm is an approve or deny form as typed, with the API's
// refusal.
type decisionForm struct {
	ID      uint64
	Verb    string // approve or deny
	Comment string
	Error   string
}

func (c *Console) remediationPage(w http.ResponseWriter, r *http.Request, s *session) {
	d, ok := c.remediation(w, r, s)
	if ok {
		c.render(w, r, http.StatusOK, "remediation", d)
	}
}

// remediation reads the remediation page's data; it answers the request
// itself, and returns false, when the API ended it (401, 403).
func (c *Console) remediation(w http.ResponseWriter, r *http.Request, s *session) (remediationData, bool) {
	ctx, cancel := ctx(r)
	defer cancel()
	cl := c.client(r, s)
	q := r.URL.Query()
	d := remediationData{base: c.base(r, s, "remediation", "Remediation"), ActionNames: policy.KnownActions(), States: api.States(),
		PauseForm: pauseForm{Target: "*", Duration: "1h"}}
	d.Forms = d.May("POST", "/api/v1/pauses") || d.May("POST", "/api/v1/actions/{id}/approve")
	var f api.HistoryFilter
	var ferr error
	d.Filter, f, ferr = journalFilterFrom(q, d.Now)
	if ferr != nil {
		d.FilterErr = ferr.Error()
	} else {
		h, err := cl.History(ctx, f)
		if c.apiError(w, r, s, err) {
			return d, false
		}
		if err != nil {
			d.FilterErr = "The journal could not be read: " + errText(err)
		}
		d.Records = h.Records
		if len(h.Records) == f.Limit {
			for _, l := range journalLimits {
				if l > f.Limit {
					mq := url.Values{}
					for k, v := range q {
						mq[k] = v
					}
					mq.Set("limit", strconv.Itoa(l))
					d.MoreURL = "/console/remediation?" + mq.Encode() + "#journal"
					break
				}
			}
		}
	}
	ap, err := cl.Actions(ctx, api.HistoryFilter{Limit: 1000, States: []journal.State{journal.StateAwaitingApproval}})
	if c.apiError(w, r, s, err) {
		return d, false
	}
	if err != nil {
		d.Notice = append(d.Notice, "The actions awaiting approval could not be read: "+errText(err))
	}
	d.Approvals = ap.Records
	d.Pauses, err = cl.Pauses(ctx)
	if c.apiError(w, r, s, err) {
		return d, false
	}
	if err != nil {
		d.Notice = append(d.Notice, "The pauses could not be read: "+errText(err))
	}
	return d, true
}

// journalFilterFrom reads the journal's filter from a page's query: as
// typed, and as the API takes it.
func journalFilterFrom(q url.Values, now time.Time) (journalFilter, api.HistoryFilter, error) {
	jf := journalFilter{Target: q.Get("target"), Action: q.Get("action"), Result: q.Get("result"), Since: q.Get("since"), Limit: journalLimits[0]}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		jf.Limit = min(n, journalLimits[len(journalLimits)-1])
	}
	f := api.HistoryFilter{Limit: jf.Limit, Target: jf.Target, Action: jf.Action, Result: jf.Result}
	if jf.Since != "" {
		since, err := parseSince(jf.Since, now)
		if err != nil {
			return jf, f, err
		}
		f.Since = since
	}
	return jf, f, nil
}

// parseSince reads the journal filter's "since": a duration back from
// now (2h) or an RFC 3339 time.
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since: want a duration such as 2h or a time such as 2026-01-02T15:04:05Z, got %q", v)
}

// oneLine joins a comment typed over several lines into one: the API
// records comments as one line.
func oneLine(s string) string {
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' || r == '\t' })
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return strings.TrimSpace(strings.Join(parts, " "))
}

// code is the status a refused change is answered with: the API's, or
// 502 when the API did not answer as itself.
func code(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) && se.Code >= 400 {
		return se.Code
	}
	return http.StatusBadGateway
}

type recordData struct {
	base
	Rec      journal.Record
	SeenBy   string
	Decision decisionForm
}

func (c *Console) recordPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showRecord(w, r, s, http.StatusOK, decisionForm{})
}

// showRecord renders one journal record, with df the decision form as
// typed when it failed.
func (c *Console) showRecord(w http.ResponseWriter, r *http.Request, s *session, status int, df decisionForm) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		c.problem(w, r, s, http.StatusNotFound, "No such record", "Journal records are numbered from 1; "+strconv.Quote(r.PathValue("id"))+" is no record's number.")
		return
	}
	ctx, cancel := ctx(r)
	defer cancel()
	rec, err := c.client(r, s).Record(ctx, id)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		c.problem(w, r, s, code(err), "Record "+strconv.FormatUint(id, 10), "The record could not be read: "+errText(err))
		return
	}
	b := c.base(r, s, "remediation", fmt.Sprintf("Action %d: %s", rec.ID, rec.Action))
	if r.Method == http.MethodPost {
		b.Path = "/console/actions/" + strconv.FormatUint(id, 10)
	}
	b.Forms = rec.State == journal.StateAwaitingApproval && b.May("POST", "/api/v1/actions/{id}/deny")
	c.render(w, r, status, "record", recordData{base: b, Rec: rec, SeenBy: seenBy(rec), Decision: df})
}

// seenBy says what raised a record's alert.
func seenBy(r journal.Record) string {
	switch {
	case r.Author != "" && r.Alert == "":
		return "a human, by hand"
	case r.FromEvent:
		return "an agent's libvirt event"
	default:
		return "the alert rules"
	}
}

// decide approves (yes) or denies the action of the path.
func (c *Console) decide(yes bool) func(http.ResponseWriter, *http.Request, *session) {
	verb, done := "deny", "Denied"
	if yes {
		verb, done = "approve", "Approved"
	}
	return func(w http.ResponseWriter, r *http.Request, s *session) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil || id == 0 {
			c.problem(w, r, s, http.StatusNotFound, "No such record", "Journal records are numbered from 1.")
			return
		}
		comment := oneLine(r.PostForm.Get("comment"))
		ctx, cancel := ctx(r)
		defer cancel()
		cl := c.client(r, s)
		req := api.DecisionRequest{Comment: comment}
		var rec journal.Record
		if yes {
			rec, err = cl.Approve(ctx, id, req)
		} else {
			rec, err = cl.Deny(ctx, id, req)
		}
		if c.apiError(w, r, s, err) {
			return
		}
		if err != nil {
			c.showRecord(w, r, s, code(err), decisionForm{ID: id, Verb: verb, Comment: r.PostForm.Get("comment"), Error: errText(err)})
			return
		}
		back := localNext(r.PostForm.Get("back"))
		if back == "/console/" {
			back = "/console/actions/" + strconv.FormatUint(id, 10)
		}
		c.done(w, r, s, back, fmt.Sprintf("%s action %d (%s on %s); it is now %s.", done, rec.ID, rec.Action, targetOf(rec), rec.State))
	}
}

// targetOf names a record's target for a sentence.
func targetOf(r journal.Record) string {
	switch {
	case r.Domain != "" && r.Host != "":
		return r.Domain + " on " + r.Host
	case r.Target != "":
		return r.Target
	case r.Host != "":
		return r.Host
	}
	return "its target"
}

func (c *Console) pause(w http.ResponseWriter, r *http.Request, s *session) {
	pf := pauseForm{Target: strings.TrimSpace(r.PostForm.Get("target")), Duration: strings.TrimSpace(r.PostForm.Get("duration")),
		Comment: r.PostForm.Get("comment")}
	ctx, cancel := ctx(r)
	defer cancel()
	p, err := c.client(r, s).Pause(ctx, api.PauseRequest{Target: pf.Target, Duration: pf.Duration, Comment: oneLine(pf.Comment)})
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		pf.Error = errText(err)
		d, ok := c.remediation(w, r, s)
		if !ok {
			return
		}
		d.Path, d.PauseForm = "/console/remediation", pf
		c.render(w, r, code(err), "remediation", d)
		return
	}
	c.done(w, r, s, "/console/remediation#pauses", fmt.Sprintf("Paused remediation of %s until %s.", describeTarget(p.Target), p.Until.UTC().Format(time.RFC3339)))
}

func (c *Console) endPause(w http.ResponseWriter, r *http.Request, s *session) {
	target := r.PostForm.Get("target")
	ctx, cancel := ctx(r)
	defer cancel()
	err := c.client(r, s).Resume(ctx, target)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		d, ok := c.remediation(w, r, s)
		if !ok {
			return
		}
		d.Path, d.EndErr = "/console/remediation", errText(err)
		c.render(w, r, code(err), "remediation", d)
		return
	}
	c.done(w, r, s, "/console/remediation#pauses", "Ended the pause of "+describeTarget(target)+".")
}

// describeTarget names a pause's target.
func describeTarget(t string) string {
	if t == guards.Everything {
		return "everything"
	}
	return t
}
