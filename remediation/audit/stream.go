package audit

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grafana/loki/pkg/push"

	"caretaker/remediation/journal"
)

// Job is the job label of every stream.
const Job = "caretaker-remediation"

// The labels this package sets on each stream. Few and bounded (a fleet's
// hosts and guests, a policy's actions, the journal's states), so Loki's
// index stays small; everything else is in the line.
const (
	labelJob    = "job"
	labelHost   = "host"
	labelGuest  = "guest"
	labelAction = "action"
	labelResult = "result"
)

func reserved(name string) bool {
	switch name {
	case labelJob, labelHost, labelGuest, labelAction, labelResult:
		return true
	}
	return false
}

// entry is one record waiting to be pushed, with the time it is logged at.
type entry struct {
	rec journal.Record
	ts  time.Time
}

// stateTime is when rec reached its state: its entry's timestamp, so a
// record logged pending, running and then succeeded gives three lines at
// the three moments. Zero when the record carries no time.
func stateTime(rec journal.Record) time.Time {
	var ts time.Time
	switch rec.State {
	case journal.StatePending, journal.StateSkipped:
		// Decided (or decided against) at creation; nothing ran.
	case journal.StateRunning:
		ts = rec.Started
	default: // succeeded, failed, interrupted, and states added later
		ts = rec.Finished
		if ts.IsZero() {
			ts = rec.Started
		}
	}
	if ts.IsZero() {
		ts = rec.Created
	}
	return ts
}

// streamLabels renders rec's label set the way Loki parses it (a PromQL
// metric without a name): sorted by name, values quoted, empty ones left
// out. external must not hold a reserved name (validate checks).
func streamLabels(rec journal.Record, external map[string]string) string {
	guest := rec.Domain
	if guest == "" {
		guest = rec.UUID
	}
	type pair struct{ name, value string }
	pairs := make([]pair, 0, 5+len(external))
	for _, p := range []pair{
		{labelJob, Job},
		{labelHost, rec.Host},
		{labelGuest, guest},
		{labelAction, rec.Action},
		{labelResult, string(rec.State)},
	} {
		if p.value != "" {
			pairs = append(pairs, p)
		}
	}
	for n, v := range external {
		pairs = append(pairs, pair{n, v})
	}
	slices.SortFunc(pairs, func(a, b pair) int { return strings.Compare(a.name, b.name) })
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range pairs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.name)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(p.value))
	}
	b.WriteByte('}')
	return b.String()
}

// buildPushRequest groups entries into streams by label set. Streams are
// sorted by their labels and each stream's entries by timestamp (stable, so
// entries at the same instant keep the order they were logged in): Loki
// rejects a stream whose entries go back in time unless it accepts
// out-of-order writes.
func buildPushRequest(entries []entry, external map[string]string) (*push.PushRequest, error) {
	index := make(map[string]int)
	var streams []push.Stream
	for _, e := range entries {
		line, err := json.Marshal(e.rec)
		if err != nil {
			return nil, fmt.Errorf("encode record %d: %w", e.rec.ID, err)
		}
		ls := streamLabels(e.rec, external)
		i, ok := index[ls]
		if !ok {
			i = len(streams)
			index[ls] = i
			streams = append(streams, push.Stream{Labels: ls})
		}
		streams[i].Entries = append(streams[i].Entries, push.Entry{Timestamp: e.ts, Line: string(line)})
	}
	slices.SortFunc(streams, func(a, b push.Stream) int { return strings.Compare(a.Labels, b.Labels) })
	for _, s := range streams {
		slices.SortStableFunc(s.Entries, func(a, b push.Entry) int { return a.Timestamp.Compare(b.Timestamp) })
	}
	return &push.PushRequest{Streams: streams}, nil
}
