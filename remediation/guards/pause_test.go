package guards

import (
	"strings"
	"testing"
	"time"
)

func TestPauseValidate(t *testing.T) {
	good := Pause{Target: "vm-1", Author: "ana", Comment: "debugging the disk", Until: at(time.Hour)}
	tests := []struct {
		name string
		edit func(*Pause)
		err  string
	}{
		{"good", func(*Pause) {}, ""},
		{"no author", func(p *Pause) { p.Author = "" }, "pause vm-1: no author"},
		{"no comment", func(p *Pause) { p.Comment = "" }, "pause vm-1: no comment"},
		{"no target", func(p *Pause) { p.Target = "" }, `no target (use "*" to pause everything)`},
		{"no expiry", func(p *Pause) { p.Until = time.Time{} }, "no expiry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.edit(&p)
			err := p.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err %v, want containing %q", err, tt.err)
			}
		})
	}
}

func TestPaused(t *testing.T) {
	own := Pause{Target: "vm-1", Author: "ana", Comment: "debugging", Until: at(time.Hour)}
	global := Pause{Target: Everything, Author: "bo", Comment: "storage outage", Until: at(2 * time.Hour)}
	noAuthor := Pause{Target: "vm-2", Comment: "x", Until: at(time.Hour)}
	tests := []struct {
		name   string
		ps     Pauses
		target string
		now    time.Duration
		want   bool
		reason string
	}{
		{"none", nil, "vm-1", 0, false, "allowed: vm-1 is not paused"},
		{"own pause", Pauses{own}, "vm-1", 0, true, "waiting: vm-1 paused by ana until 2026-03-29T02:00:00Z: debugging"},
		{"other target", Pauses{own}, "vm-3", 0, false, ""},
		{"a moment before expiry", Pauses{own}, "vm-1", time.Hour - time.Nanosecond, true, ""},
		{"expired exactly at Until", Pauses{own}, "vm-1", time.Hour, false, ""},
		{"global wins over own", Pauses{own, global}, "vm-1", 0, true, "waiting: all remediation paused by bo until 2026-03-29T03:00:00Z: storage outage"},
		{"global outlives own", Pauses{own, global}, "vm-1", 90 * time.Minute, true, ""},
		{"invalid pause ignored", Pauses{noAuthor}, "vm-2", 0, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := tt.ps.Paused(tt.target, at(tt.now))
			if got != tt.want {
				t.Fatalf("Paused = %v, want %v", got, tt.want)
			}
			if d := tt.ps.Decide(tt.target, at(tt.now)); tt.reason != "" && d.Reason != tt.reason {
				t.Errorf("reason\n got %q\nwant %q", d.Reason, tt.reason)
			}
		})
	}
}
