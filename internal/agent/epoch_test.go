package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agentapi"
)

// metricLines returns the agent's /metrics lines that start with prefix.
func metricLines(t *testing.T, a *Agent, prefix string) []string {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var out []string
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func wantMetric(t *testing.T, a *Agent, line string) {
	t.Helper()
	name, _, _ := strings.Cut(line, " ")
	got := metricLines(t, a, name+" ")
	if len(got) != 1 || got[0] != line {
		t.Errorf("/metrics has %q, want %q", got, line)
	}
}

func writeEpochFile(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, EpochFile), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// An agent that has seen epoch 57 refuses the actions of older leaders
// (409, nothing done, counted), takes equal and higher ones, remembering a
// higher one on disk, and takes requests without the header; reads are
// never fenced; a malformed header is a 400 naming it; authentication
// comes first.
func TestFence(t *testing.T) {
	t.Parallel()
	const startPath = "/api/v1/domains/" + downUUID + "/start"
	bearer := "Bearer " + token
	tests := []struct {
		name         string
		method, path string
		auth         string
		epochs       []string // Caretaker-Epoch values; none: no header
		wantCode     int
		wantMsg      string // the error's message, exactly, when not 2xx
		wantStarted  bool   // downUUID running afterwards
		wantHighest  int64
		wantRefused  int
	}{
		{name: "lower", method: "POST", path: startPath, auth: bearer, epochs: []string{"41"}, wantCode: 409,
			wantMsg: "epoch 41 is older than 57, the highest this agent has seen: a newer leader has taken over", wantHighest: 57, wantRefused: 1},
		{name: "just lower", method: "POST", path: startPath, auth: bearer, epochs: []string{"56"}, wantCode: 409,
			wantMsg: "epoch 56 is older than 57, the highest this agent has seen: a newer leader has taken over", wantHighest: 57, wantRefused: 1},
		{name: "equal", method: "POST", path: startPath, auth: bearer, epochs: []string{"57"}, wantCode: 200, wantStarted: true, wantHighest: 57},
		{name: "higher", method: "POST", path: startPath, auth: bearer, epochs: []string{"58"}, wantCode: 200, wantStarted: true, wantHighest: 58},
		{name: "much higher", method: "POST", path: startPath, auth: bearer, epochs: []string{"9223372036854775807"}, wantCode: 200, wantStarted: true, wantHighest: 9223372036854775807},
		// A single, unclustered server sends no epoch.
		{name: "missing", method: "POST", path: startPath, auth: bearer, wantCode: 200, wantStarted: true, wantHighest: 57},
		// Reads change nothing: not fenced.
		{name: "lower read", method: "GET", path: "/api/v1/domains/" + downUUID, auth: bearer, epochs: []string{"41"}, wantCode: 200, wantHighest: 57},
		// Every change is fenced, whichever endpoint.
		{name: "lower node delete", method: "DELETE", path: "/api/v1/nodes/c1-w0?cluster=c1&uuid=0c000000-0000-4000-8000-000000000001", auth: bearer, epochs: []string{"1"}, wantCode: 409,
			wantMsg: "epoch 1 is older than 57, the highest this agent has seen: a newer leader has taken over", wantHighest: 57, wantRefused: 1},
		{name: "lower overlay put", method: "PUT", path: "/api/v1/overlays/c1", auth: bearer, epochs: []string{"3"}, wantCode: 409,
			wantMsg: "epoch 3 is older than 57, the highest this agent has seen: a newer leader has taken over", wantHighest: 57, wantRefused: 1},
		// The epoch is the server's only once it has authenticated.
		{name: "lower without token", method: "POST", path: startPath, epochs: []string{"41"}, wantCode: 401, wantMsg: "missing bearer token", wantHighest: 57},
		{name: "higher without token", method: "POST", path: startPath, epochs: []string{"99"}, wantCode: 401, wantMsg: "missing bearer token", wantHighest: 57},
		{name: "malformed", method: "POST", path: startPath, auth: bearer, epochs: []string{"abc"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "abc" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "negative", method: "POST", path: startPath, auth: bearer, epochs: []string{"-58"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "-58" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "plus sign", method: "POST", path: startPath, auth: bearer, epochs: []string{"+58"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "+58" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "zero", method: "POST", path: startPath, auth: bearer, epochs: []string{"0"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "0" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "hex", method: "POST", path: startPath, auth: bearer, epochs: []string{"0x3a"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "0x3a" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "fraction", method: "POST", path: startPath, auth: bearer, epochs: []string{"58.0"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "58.0" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "empty", method: "POST", path: startPath, auth: bearer, epochs: []string{""}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "overflow", method: "POST", path: startPath, auth: bearer, epochs: []string{"9223372036854775808"}, wantCode: 400,
			wantMsg: `header Caretaker-Epoch: "9223372036854775808" is not an epoch: want a positive decimal integer`, wantHighest: 57},
		{name: "two values", method: "POST", path: startPath, auth: bearer, epochs: []string{"58", "59"}, wantCode: 400,
			wantMsg: "header Caretaker-Epoch: 2 values, want one", wantHighest: 57},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeEpochFile(t, dir, "57\n")
			a := newTestAgent(t, Config{Token: token, StateDir: dir})

			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader("{}"))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			for _, e := range tt.epochs {
				req.Header.Add(agentapi.EpochHeader, e)
			}
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, req)

			if rec.Code != tt.wantCode {
				t.Errorf("status %d %s, want %d", rec.Code, rec.Body, tt.wantCode)
			}
			if tt.wantMsg != "" {
				var body agentapi.ErrorBody
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error != tt.wantMsg {
					t.Errorf("body %s, want error %q", rec.Body, tt.wantMsg)
				}
				if body.Fenced != (tt.wantCode == 409) {
					t.Errorf("body %s: fenced %v, want %v", rec.Body, body.Fenced, tt.wantCode == 409)
				}
			}
			want := libvirt.DomainShutoff
			if tt.wantStarted {
				want = libvirt.DomainRunning
			}
			if got := stateOf(t, a, downUUID); got != want {
				t.Errorf("domain state %d, want %d", got, want)
			}
			// A float64, as every Prometheus value: exact up to 2^53.
			wantMetric(t, a, "caretaker_agent_epoch "+strconv.FormatFloat(float64(tt.wantHighest), 'g', -1, 64))
			wantMetric(t, a, fmt.Sprintf("caretaker_agent_fenced_requests_total %d", tt.wantRefused))
			data, err := os.ReadFile(filepath.Join(dir, EpochFile))
			if err != nil || string(data) != fmt.Sprintf("%d\n", tt.wantHighest) {
				t.Errorf("epoch file holds %q (%v), want %d", data, err, tt.wantHighest)
			}
		})
	}
}

// The server's client, given an epoch, is fenced by an agent that has seen
// a newer one: errors.Is(err, agentapi.ErrFenced), with the agent's words.
// twoLeaders serves an agent and returns it with the clients of two
// servers: a new leader at epoch 57 and an old one at 41.
func twoLeaders(t *testing.T) (a *Agent, newLeader, oldLeader *agentapi.Hosts) {
	t.Helper()
	a = newTestAgent(t, Config{Token: token, StateDir: t.TempDir(), DomainFilter: regexp.MustCompile(`^(up|down)$`)})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	newLeader, oldLeader = agentapi.NewHosts(token), agentapi.NewHosts(token)
	for _, h := range []*agentapi.Hosts{newLeader, oldLeader} {
		h.Add("host-a", strings.TrimPrefix(srv.URL, "http://"))
	}
	newLeader.SetEpoch(57)
	oldLeader.SetEpoch(41)
	return a, newLeader, oldLeader
}

func TestFenceThroughTheClient(t *testing.T) {
	t.Parallel()
	a, newLeader, oldLeader := twoLeaders(t)

	if err := newLeader.StartGuest(t.Context(), "host-a", upUUID); err != nil {
		t.Fatalf("start by the new leader: %v", err)
	}
	err := oldLeader.StartGuest(t.Context(), "host-a", downUUID)
	if !errors.Is(err, agentapi.ErrFenced) {
		t.Fatalf("start by the old leader: %v, want ErrFenced", err)
	}
	if want := "agent answered 409 Conflict: epoch 41 is older than 57, the highest this agent has seen: a newer leader has taken over"; !strings.HasSuffix(err.Error(), want) {
		t.Errorf("error %q, want it to end with %q", err, want)
	}
	if got := stateOf(t, a, downUUID); got != libvirt.DomainShutoff {
		t.Errorf("domain state %d after the old leader's start, want shut off", got)
	}
	// Reads are not fenced.
	if _, err := oldLeader.GuestRunning(t.Context(), "host-a", upUUID); err != nil {
		t.Errorf("read by the old leader: %v", err)
	}
	// Other conflicts are not fencing: frozen is another host's domain.
	c, _ := newLeader.Client("host-a")
	_, err = c.PutNode(t.Context(), agentapi.NodeRequest{Cluster: "c1", Name: "frozen", Role: "worker", VCPUs: 1,
		MemoryBytes: 64 << 20, DiskBytes: 128 << 20, Bridge: "br-c1", BaseImage: "base.qcow2", UserData: "#cloud-config\n",
		UUID: "0c000000-0000-4000-8000-000000000001"}, true)
	if se, ok := errors.AsType[*agentapi.StatusError](err); !ok || se.Code != 409 || errors.Is(err, agentapi.ErrFenced) {
		t.Errorf("replace of another host's domain: %v, want a 409 that is not ErrFenced", err)
	}
}

// A restarted agent (a new Agent on the same state directory) still
// refuses what it refused before, and its file is the owner's only.
func TestFenceSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state") // created by New
	start := func(a *Agent, epoch string) int {
		req := httptest.NewRequest("POST", "/api/v1/domains/"+downUUID+"/start", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set(agentapi.EpochHeader, epoch)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		return rec.Code
	}
	first := newTestAgent(t, Config{Token: token, StateDir: dir})
	wantMetric(t, first, "caretaker_agent_epoch 0")
	if code := start(first, "70"); code != 200 {
		t.Fatalf("epoch 70 on a new agent: %d", code)
	}
	first.Close()
	fi, err := os.Stat(filepath.Join(dir, EpochFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("epoch file: %v, %v; want mode 0600", fi, err)
	}

	second := newTestAgent(t, Config{Token: token, StateDir: dir})
	wantMetric(t, second, "caretaker_agent_epoch 70")
	if code := start(second, "69"); code != 409 {
		t.Errorf("epoch 69 after a restart at 70: %d, want 409", code)
	}
	if got := stateOf(t, second, downUUID); got != libvirt.DomainShutoff {
		t.Errorf("domain state %d after a fenced start, want shut off", got)
	}
	wantMetric(t, second, "caretaker_agent_fenced_requests_total 1")
	if code := start(second, "70"); code != 200 {
		t.Errorf("epoch 70 after a restart at 70: %d, want 200", code)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state directory holds %v, want the epoch file only (no temporary files left)", entries)
	}
}

// A corrupt epoch file stops the agent at start, naming the file: the
// agent must not forget a leader it has seen.
func TestFenceCorruptFile(t *testing.T) {
	t.Parallel()
	for _, content := range []string{"", "\n", "abc\n", "-5\n", "0\n", "57 58\n", "0x39"} {
		t.Run(fmt.Sprintf("%q", content), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeEpochFile(t, dir, content)
			_, err := New(Config{LibvirtURI: "test:///default", StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
			path := filepath.Join(dir, EpochFile)
			if err == nil || !strings.Contains(err.Error(), "epoch file "+path+" is corrupt") {
				t.Errorf("New with epoch file %q: %v, want an error naming %s", content, err, path)
			}
		})
	}
}

// Concurrent requests with epochs are checked and recorded one at a time:
// the highest wins, in memory and on disk, and every epoch below the one
// recorded before it is refused.
func TestFenceConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := newFence(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for e := int64(1); e <= 64; e++ {
		wg.Go(func() {
			highest, err := f.admit(e)
			if err != nil {
				t.Errorf("admit %d: %v", e, err)
			}
			if highest > 64 {
				t.Errorf("admit %d: highest %d, above any epoch sent", e, highest)
			}
		})
	}
	wg.Wait()
	if f.highest != 64 {
		t.Errorf("highest %d, want 64", f.highest)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, EpochFile)); string(data) != "64\n" {
		t.Errorf("epoch file %q, want 64", data)
	}
	if h, _ := f.admit(63); h != 64 {
		t.Errorf("admit 63 after 64: highest %d, want 64 (refused)", h)
	}
}

// An epoch that cannot be written is not recorded either: memory and file
// stay alike, and the request is answered 500 with nothing done.
func TestFenceUnwritable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := newTestAgent(t, Config{Token: token, StateDir: dir})
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/api/v1/domains/"+downUUID+"/start", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(agentapi.EpochHeader, "5")
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "record epoch 5: ") {
		t.Errorf("%d %s, want 500 saying the epoch was not recorded", rec.Code, rec.Body)
	}
	if got := stateOf(t, a, downUUID); got != libvirt.DomainShutoff {
		t.Errorf("domain state %d, want shut off", got)
	}
	wantMetric(t, a, "caretaker_agent_epoch 0")
}

func TestParseEpoch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want int64 // 0: an error
	}{
		{"1", 1}, {"57", 57}, {"0057", 57}, {"9223372036854775807", 9223372036854775807},
		{"", 0}, {"0", 0}, {"-1", 0}, {"+1", 0}, {" 1", 0}, {"1e3", 0}, {"٣", 0}, {"9223372036854775808", 0}, {"99999999999999999999", 0},
	} {
		got, err := parseEpoch(tt.in)
		if got != tt.want || (err != nil) != (tt.want == 0) {
			t.Errorf("parseEpoch(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

// The fenced answer is the API's JSON error with fenced set, as the
// client reads it.
func TestFencedAnswerShape(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeEpochFile(t, dir, "9\n")
	a := newTestAgent(t, Config{Token: token, StateDir: dir})
	req := httptest.NewRequest("POST", "/api/v1/domains/"+downUUID+"/start", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(agentapi.EpochHeader, "8")
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusConflict || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("%d %q, want 409 application/json", rec.Code, rec.Header().Get("Content-Type"))
	}
	if want := `{"error":"epoch 8 is older than 9, the highest this agent has seen: a newer leader has taken over","fenced":true}` + "\n"; rec.Body.String() != want {
		t.Errorf("body %s, want %s", rec.Body, want)
	}
}

// A new leader's announcement alone makes the agent refuse its
// predecessor, before the new leader has acted there.
func TestFenceAnnounce(t *testing.T) {
	t.Parallel()
	a, newLeader, oldLeader := twoLeaders(t)
	if failed := newLeader.Announce(t.Context()); len(failed) != 0 {
		t.Fatalf("announce: %v", failed)
	}
	c, _ := oldLeader.Client("host-a")
	if _, err := c.AnnounceEpoch(t.Context()); !errors.Is(err, agentapi.ErrFenced) {
		t.Errorf("the old leader's announcement: %v, want ErrFenced", err)
	}
	if err := oldLeader.StartGuest(t.Context(), "host-a", downUUID); !errors.Is(err, agentapi.ErrFenced) {
		t.Fatalf("start by the old leader after the announcement: %v, want ErrFenced", err)
	}
	if got := stateOf(t, a, downUUID); got != libvirt.DomainShutoff {
		t.Errorf("domain state %d after the old leader's start, want shut off", got)
	}
	wantMetric(t, a, "caretaker_agent_epoch 57")
}

// Whatever a request's Caretaker-Epoch holds, parseEpoch either refuses
// it or returns the positive number its digits spell.
func FuzzParseEpoch(f *testing.F) {
	for _, s := range []string{"57", "0", "-1", "+5", "0x10", "9223372036854775807", "9223372036854775808", "", " 5", "5 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := parseEpoch(s)
		if err != nil {
			return
		}
		if e <= 0 || strconv.FormatInt(e, 10) != strings.TrimLeft(s, "0") {
			t.Errorf("parseEpoch(%q) = %d", s, e)
		}
	})
}
