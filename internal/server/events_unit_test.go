package server

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/agentapi"
	"caretaker/internal/config"
	"caretaker/internal/monitoring"
	"caretaker/remediation"
)

// What the stream's lines say about whether a rule's alert can only have
// seen an event's outage: holes, gaps, unresumed reconnects and the
// guest's reports of running.
func TestSameOutageFromStreamLines(t *testing.T) {
	const uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f"
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	hello := func(boot string, resumed bool) agentapi.StreamLine {
		return agentapi.StreamLine{Hello: &agentapi.Hello{Boot: boot, Resumed: resumed, Libvirt: true}}
	}
	event := func(seq uint64, typ string, state int) agentapi.StreamLine {
		return agentapi.StreamLine{Event: &agentapi.Event{Seq: seq, Type: typ, UUID: uuid, StateKnown: true, State: state}}
	}
	cases := []struct {
		name  string
		lines []agentapi.StreamLine
		// the event's and the rule's starts, seconds after t0; lines
		// arrive a second apart from t0.
		eventAt, alertAt int
		want             bool
	}{
		{"unbroken", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff)}, 1, 3, true},
		{"stream opened after the event", []agentapi.StreamLine{hello("a", false)}, -5, 3, false},
		{"hole in the sequence", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), event(3, agentapi.EventResumed, stateShutOff)}, 1, 3, false},
		{"gap event", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), {Event: &agentapi.Event{Seq: 2, Type: agentapi.EventGap}}}, 1, 3, false},
		{"reconnect that resumed", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), hello("a", true), event(2, agentapi.EventDefined, stateShutOff)}, 1, 5, true},
		{"reconnect to another boot", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), hello("b", false)}, 1, 5, false},
		{"first event after a hello without libvirt", []agentapi.StreamLine{{Hello: &agentapi.Hello{Boot: "a", Libvirt: false}}, event(1, agentapi.EventStopped, stateShutOff)}, 2, 4, true},
		{"libvirt events down", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), {Heartbeat: &agentapi.Heartbeat{Seq: 1}}}, 1, 5, false},
		{"running again just before the rule's data", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), event(2, agentapi.EventStarted, stateRunning)}, 1, 3, true},
		{"running again well before the rule's data", []agentapi.StreamLine{hello("a", false), event(1, agentapi.EventStopped, stateShutOff), event(2, agentapi.EventStarted, stateRunning)}, 1, 30, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := newGuestEvents(agentapi.NewHosts(""), &atomic.Pointer[monitoring.Monitor]{}, config.ScrapeJob{ScrapeInterval: time.Second}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			hs := &hostStream{waiters: map[string][]chan struct{}{}, raised: map[string]raised{}, running: map[string][]time.Time{}}
			g.streams["h"] = hs
			now := t0
			g.now = func() time.Time { return now }
			var sent []remediation.Alert
			for _, l := range c.lines {
				now = now.Add(time.Second)
				if err := g.line(context.Background(), "h", hs, l, func(_ context.Context, a []remediation.Alert) { sent = append(sent, a...) }); err != nil {
					t.Fatal(err)
				}
			}
			at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
			if got, _ := g.SameOutage("h", uuid, at(c.eventAt), at(c.alertAt)); got != c.want {
				t.Errorf("SameOutage = %v, want %v", got, c.want)
			}
			if len(sent) != 0 {
				t.Errorf("alerts sent without a monitor to take labels from: %+v", sent)
			}
		})
	}
}
