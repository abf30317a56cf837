package etcdproc_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/etcdproc"
	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/needs"
)

// binary needs the real etcd, as etcdtest.Start does, for the tests that
// start members with options of their own.
func binary(t *testing.T) string {
	t.Helper()
	bin, err := etcdproc.Find()
	if err != nil {
		needs.Missing(t, "%v", err)
	}
	return bin
}

// gateway posts body to etcd's v3 JSON gateway (which 3.4 serves under
// /v3/ as later releases do) and decodes the answer into out.
func gateway(t *testing.T, p *etcdproc.Proc, path string, body, out any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Post(p.Endpoint()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		t.Fatalf("POST %s: %s: %s", path, resp.Status, msg.String())
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func put(t *testing.T, p *etcdproc.Proc, key, value string) {
	t.Helper()
	var out struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	gateway(t, p, "/v3/kv/put", map[string]string{"key": b64(key), "value": b64(value)}, &out)
	if out.Header.Revision == "" {
		t.Fatalf("put %s: no revision in the answer", key)
	}
}

// get returns the value of key, and whether it exists.
func get(t *testing.T, p *etcdproc.Proc, key string) (string, bool) {
	t.Helper()
	var out struct {
		KVs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	gateway(t, p, "/v3/kv/range", map[string]string{"key": b64(key)}, &out)
	if len(out.KVs) == 0 {
		return "", false
	}
	v, err := base64.StdEncoding.DecodeString(out.KVs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return string(v), true
}

// gone says whether no process has pid: Stop and Kill reap it, so a
// signal 0 finds nothing (unless the pid was reused at once).
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// healthyWithin polls Health until it answers or limit passes.
func healthyWithin(p *etcdproc.Proc, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		err := p.Health(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestStartPutGet(t *testing.T) {
	p := etcdtest.Start(t)
	if err := p.Health(t.Context()); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(p.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	if host, port, _ := net.SplitHostPort(u.Host); host != "127.0.0.1" || port == "2379" || port == "2380" {
		t.Errorf("endpoint %s: want a free loopback port, never etcd's defaults", p.Endpoint())
	}
	if p.Pid() <= 0 {
		t.Errorf("Pid() = %d", p.Pid())
	}
	put(t, p, "/caretaker/test", "hello")
	if v, ok := get(t, p, "/caretaker/test"); !ok || v != "hello" {
		t.Errorf("get = %q, %v; want hello", v, ok)
	}
	// The limits raised for the HA code's batches: a transaction of 1,000
	// puts is more than etcd's default of 128 operations.
	ops := make([]map[string]any, 1000)
	for i := range ops {
		ops[i] = map[string]any{"request_put": map[string]string{"key": b64(fmt.Sprintf("/batch/%04d", i)), "value": b64("x")}}
	}
	var txn struct {
		Succeeded bool `json:"succeeded"`
	}
	gateway(t, p, "/v3/kv/txn", map[string]any{"success": ops}, &txn)
	if !txn.Succeeded {
		t.Error("a transaction of 1,000 puts did not succeed")
	}
	if v, ok := get(t, p, "/batch/0999"); !ok || v != "x" {
		t.Errorf("after the batch: get = %q, %v", v, ok)
	}
}

func TestPauseResume(t *testing.T) {
	p := etcdtest.Start(t)
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := p.Health(t.Context())
	if err == nil {
		t.Fatal("a paused etcd answered /health")
	}
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Errorf("paused: %v; want a timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a paused member took %s to look unhealthy", d)
	}
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := healthyWithin(p, 10*time.Second); err != nil {
		t.Fatalf("after Resume: %v", err)
	}
	put(t, p, "k", "after resume")
}

func TestRestartKeepsData(t *testing.T) {
	p := etcdtest.Start(t)
	endpoint, pid := p.Endpoint(), p.Pid()
	put(t, p, "/caretaker/epoch", "7")
	if err := p.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p.Endpoint() != endpoint {
		t.Errorf("endpoint %s after Restart, was %s", p.Endpoint(), endpoint)
	}
	if p.Pid() == pid || !gone(pid) {
		t.Errorf("pid %d after Restart, was %d (gone: %v)", p.Pid(), pid, gone(pid))
	}
	if v, ok := get(t, p, "/caretaker/epoch"); !ok || v != "7" {
		t.Errorf("after Restart: get = %q, %v; want 7", v, ok)
	}
}

func TestKillThenRestart(t *testing.T) {
	p := etcdtest.Start(t)
	put(t, p, "k", "v")
	pid := p.Pid()
	p.Kill()
	if !gone(pid) || p.Pid() != 0 {
		t.Fatalf("after Kill: pid %d gone %v, Pid() = %d", pid, gone(pid), p.Pid())
	}
	if err := p.Health(t.Context()); err == nil {
		t.Fatal("a killed etcd answered /health")
	}
	if err := p.Pause(); err == nil {
		t.Error("Pause of a killed member: no error")
	}
	// What a crashed etcd must survive: a restart on the same data.
	if err := p.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if v, ok := get(t, p, "k"); !ok || v != "v" {
		t.Errorf("after a kill and a restart: get = %q, %v", v, ok)
	}
}

func TestStopLeavesNoProcess(t *testing.T) {
	bin := binary(t)
	var out bytes.Buffer
	p, err := etcdproc.Start(t.Context(), etcdproc.Options{Binary: bin, Dir: t.TempDir(), Name: "stop", Stdout: &syncWriter{w: &out}})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("pid %d still exists after Stop", pid)
	}
	if p.Pid() != 0 {
		t.Errorf("Pid() = %d after Stop", p.Pid())
	}
	if err := p.Stop(); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
	if p.Log() == "" || !strings.Contains(p.Log(), "stop") {
		t.Errorf("Log() after Stop: %q", p.Log())
	}
	if out.Len() == 0 {
		t.Error("nothing copied to Options.Stdout")
	}
}

// A paused member still stops: SIGTERM is followed by SIGCONT.
func TestStopPaused(t *testing.T) {
	p := etcdtest.Start(t)
	pid := p.Pid()
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= etcdproc.StopGrace {
		t.Errorf("Stop of a paused member took %s", d)
	}
	if !gone(pid) {
		t.Errorf("pid %d still exists", pid)
	}
}

func TestContextEndStops(t *testing.T) {
	bin := binary(t)
	ctx, cancel := context.WithCancel(t.Context())
	p, err := etcdproc.Start(ctx, etcdproc.Options{Binary: bin, Dir: t.TempDir()})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	pid := p.Pid()
	cancel()
	deadline := time.Now().Add(etcdproc.StopGrace + 5*time.Second)
	for !gone(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !gone(pid) {
		t.Errorf("pid %d still exists after its context ended", pid)
	}
}

func TestStartErrorHasLog(t *testing.T) {
	bin := binary(t)
	_, err := etcdproc.Start(t.Context(), etcdproc.Options{Binary: bin, Dir: t.TempDir(), ExtraArgs: []string{"--no-such-flag"}})
	if err == nil || !strings.Contains(err.Error(), "exited before it was healthy") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("err = %v; want the exit and etcd's complaint", err)
	}
}

// A port given by the caller is not chosen again: the error says it is
// taken.
func TestGivenPortTaken(t *testing.T) {
	bin := binary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = etcdproc.Start(t.Context(), etcdproc.Options{Binary: bin, Dir: t.TempDir(), ClientAddr: l.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("err = %v; want address already in use", err)
	}
}

func TestStartNeedsDir(t *testing.T) {
	if _, err := etcdproc.Start(t.Context(), etcdproc.Options{Binary: "/bin/true"}); err == nil {
		t.Error("Start without a data directory: no error")
	}
}
