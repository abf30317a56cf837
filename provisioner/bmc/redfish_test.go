package bmc

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	mockSystem = "/redfish/v1/Systems/437XR1138R2"
	mockUser   = "root"
	mockPass   = "calvin-s3cret"
)

// fakeRedfish answers with the DMTF mockup's documents from testdata and
// applies Reset and Boot PATCHes to its in-memory copy, as a BMC would.
type fakeRedfish struct {
	mu       sync.Mutex
	docs     map[string]map[string]any // by @odata.id path
	resets   []string                  // ResetTypes posted, in order
	requests int
	fail5xx  int // answer this many next requests with 503
}

func newFakeRedfish(t testing.TB) *fakeRedfish {
	t.Helper()
	f := &fakeRedfish{docs: map[string]map[string]any{}}
	err := filepath.WalkDir("testdata/redfish", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "index.json" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			return err
		}
		f.docs["/"+filepath.ToSlash(filepath.Dir(strings.TrimPrefix(p, "testdata/")))] = doc
		return nil
	})
	if err != nil || len(f.docs) != 3 {
		t.Fatalf("load mockup: %v (%d documents)", err, len(f.docs))
	}
	return f
}

func (f *fakeRedfish) system() map[string]any { return f.docs[mockSystem] }

// set changes the system's power, boot override and allowed reset types
// (nil keeps the mockup's).
func (f *fakeRedfish) set(power, bootTarget, bootEnabled string, allowed []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.system()
	s["PowerState"] = power
	boot := s["Boot"].(map[string]any)
	boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"] = bootTarget, bootEnabled
	if allowed != nil {
		reset := s["Actions"].(map[string]any)["#ComputerSystem.Reset"].(map[string]any)
		var vals []any // as decoded JSON holds it
		for _, v := range allowed {
			vals = append(vals, v)
		}
		reset["ResetType@Redfish.AllowableValues"] = vals
	}
}

func (f *fakeRedfish) state() (power, bootTarget, bootEnabled string, resets []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.system()
	boot := s["Boot"].(map[string]any)
	return s["PowerState"].(string), boot["BootSourceOverrideTarget"].(string), boot["BootSourceOverrideEnabled"].(string), slices.Clone(f.resets)
}

func redfishError(w http.ResponseWriter, code int, id, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code":    "Base.1.0.GeneralError",
		"message": "A general error has occurred. See ExtendedInfo for more information.",
		"@Message.ExtendedInfo": []map[string]any{
			{"MessageId": id, "Message": msg},
		},
	}})
}

func (f *fakeRedfish) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if u, p, ok := r.BasicAuth(); !ok || u != mockUser || p != mockPass {
		redfishError(w, http.StatusUnauthorized, "Base.1.8.NoValidSession", "There is no valid session established with the implementation.")
		return
	}
	if f.fail5xx > 0 {
		f.fail5xx--
		redfishError(w, http.StatusServiceUnavailable, "Base.1.8.ServiceTemporarilyUnavailable", "The service is temporarily unavailable.")
		return
	}
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case r.Method == http.MethodGet && f.docs[p] != nil:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(f.docs[p])
	case r.Method == http.MethodPost && p == mockSystem+"/Actions/ComputerSystem.Reset":
		var req struct{ ResetType string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			redfishError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", "The request body submitted was malformed JSON.")
			return
		}
		reset := f.system()["Actions"].(map[string]any)["#ComputerSystem.Reset"].(map[string]any)
		var allowed []string
		for _, v := range reset["ResetType@Redfish.AllowableValues"].([]any) {
			allowed = append(allowed, v.(string))
		}
		if !slices.Contains(allowed, req.ResetType) {
			redfishError(w, http.StatusBadRequest, "Base.1.8.ActionParameterValueNotInList",
				"The value "+req.ResetType+" for the parameter ResetType is not in the list of acceptable values.")
			return
		}
		f.resets = append(f.resets, req.ResetType)
		switch req.ResetType {
		case "ForceOff", "GracefulShutdown":
			f.system()["PowerState"] = "Off"
		default:
			f.system()["PowerState"] = "On"
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPatch && p == mockSystem:
		var req struct{ Boot map[string]string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Boot == nil {
			redfishError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", "The request body submitted was malformed JSON.")
			return
		}
		boot := f.system()["Boot"].(map[string]any)
		for k, v := range req.Boot {
			if _, ok := boot[k]; !ok {
				redfishError(w, http.StatusBadRequest, "Base.1.8.PropertyUnknown", "The property "+k+" is not in the list of valid properties for the resource.")
				return
			}
			boot[k] = v
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		redfishError(w, http.StatusNotFound, "Base.1.8.ResourceMissingAtURI", "The resource at the URI "+r.URL.Path+" was not found.")
	}
}

// startRedfish serves f over TLS and returns a Controller for it.
func startRedfish(t testing.TB, f *fakeRedfish, mod func(*Config)) Controller {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	cfg := Config{
		Type:       TypeRedfish,
		Address:    srv.URL,
		Username:   mockUser,
		SecretsDir: secretsDir(t, mockPass+"\n"), PasswordFile: "bmc.pass",
		Insecure: true,
		Timeout:  5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRedfishPower(t *testing.T) {
	t.Parallel()
	withCycle := []string{"On", "ForceOff", "PowerCycle", "ForceRestart"}
	for _, tc := range []struct {
		name       string
		initial    string
		allowed    []string // nil: the mockup's list, without PowerCycle
		op         func(Controller, context.Context) error
		wantResets []string
		wantPower  string
	}{
		{name: "on", initial: "Off", op: Controller.PowerOn, wantResets: []string{"On"}, wantPower: "On"},
		{name: "off", initial: "On", op: Controller.PowerOff, wantResets: []string{"ForceOff"}, wantPower: "Off"},
		{name: "cycle falls back to ForceRestart", initial: "On", op: Controller.PowerCycle, wantResets: []string{"ForceRestart"}, wantPower: "On"},
		{name: "cycle", initial: "On", allowed: withCycle, op: Controller.PowerCycle, wantResets: []string{"PowerCycle"}, wantPower: "On"},
		{name: "cycle when off powers on", initial: "Off", allowed: withCycle, op: Controller.PowerCycle, wantResets: []string{"On"}, wantPower: "On"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRedfish(t)
			f.set(tc.initial, "None", "Disabled", tc.allowed)
			c := startRedfish(t, f, nil)
			ctx := context.Background()
			before, err := c.PowerStatus(ctx)
			if err != nil || before.String() != strings.ToLower(tc.initial) {
				t.Fatalf("PowerStatus before = %v, %v; want %s", before, err, tc.initial)
			}
			if err := tc.op(c, ctx); err != nil {
				t.Fatal(err)
			}
			power, _, _, resets := f.state()
			if power != tc.wantPower || !slices.Equal(resets, tc.wantResets) {
				t.Fatalf("after: PowerState %s, resets %v; want %s, %v", power, resets, tc.wantPower, tc.wantResets)
			}
			after, err := c.PowerStatus(ctx)
			if err != nil || after.String() != strings.ToLower(tc.wantPower) {
				t.Fatalf("PowerStatus after = %v, %v; want %s", after, err, tc.wantPower)
			}
		})
	}
}

func TestRedfishSetPXEBootOnce(t *testing.T) {
	t.Parallel()
	f := newFakeRedfish(t)
	f.set("On", "Hdd", "Continuous", nil)
	c := startRedfish(t, f, func(c *Config) { c.SystemID = "437XR1138R2" })
	if err := c.SetPXEBootOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, target, enabled, _ := f.state(); target != "Pxe" || enabled != "Once" {
		t.Fatalf("Boot override = %s/%s, want Pxe/Once", target, enabled)
	}
}

func TestRedfishErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		setup        func(*fakeRedfish)
		mod          func(*Config)
		op           func(Controller, context.Context) error
		wantErr      string
		wantRequests int
	}{
		{
			name:         "wrong password is not retried",
			mod:          func(c *Config) { c.SecretsDir = secretsDir(t, "wrong-s3cret"); c.Retries = 2 },
			op:           Controller.PowerOn,
			wantErr:      "power on: attempt 1 of 3: GET /redfish/v1/Systems: 401 Unauthorized (check username and password_file): There is no valid session established with the implementation.",
			wantRequests: 1,
		},
		{
			name:         "reset type refused",
			setup:        func(f *fakeRedfish) { f.set("Off", "None", "Disabled", []string{"ForceOff"}) },
			op:           Controller.PowerOn,
			wantErr:      "power on: POST /redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset: 400 Bad Request: The value On for the parameter ResetType is not in the list of acceptable values.",
			wantRequests: 3,
		},
		{
			name:         "unknown system id",
			mod:          func(c *Config) { c.SystemID = "1" },
			op:           Controller.SetPXEBootOnce,
			wantErr:      `set PXE boot once: no system "1" in the systems collection (has 437XR1138R2)`,
			wantRequests: 1,
		},
		{
			name:         "5xx without retries",
			setup:        func(f *fakeRedfish) { f.fail5xx = 1 },
			op:           Controller.PowerOff,
			wantErr:      "power off: GET /redfish/v1/Systems: 503 Service Unavailable: The service is temporarily unavailable.",
			wantRequests: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRedfish(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			c := startRedfish(t, f, tc.mod)
			err := tc.op(c, context.Background())
			if err == nil || !strings.HasSuffix(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v\nwant suffix: %s", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error reveals the password: %v", err)
			}
			if errors.Is(err, ErrNoAnswer) {
				t.Fatalf("error %v claims the BMC did not answer", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.requests != tc.wantRequests {
				t.Fatalf("%d requests, want %d", f.requests, tc.wantRequests)
			}
		})
	}
}

func TestRedfishRetries5xx(t *testing.T) {
	t.Parallel()
	f := newFakeRedfish(t)
	f.set("On", "None", "Disabled", nil)
	f.fail5xx = 2
	c := startRedfish(t, f, func(c *Config) { c.Retries = 2 })
	if err := c.PowerOff(context.Background()); err != nil {
		t.Fatal(err)
	}
	if power, _, _, resets := f.state(); power != "Off" || !slices.Equal(resets, []string{"ForceOff"}) {
		t.Fatalf("PowerState %s, resets %v; want Off, [ForceOff]", power, resets)
	}
}

func TestRedfishVerifiesCertificate(t *testing.T) {
	t.Parallel()
	f := newFakeRedfish(t)
	c := startRedfish(t, f, func(c *Config) { c.Insecure = false })
	_, err := c.PowerStatus(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("err = %v, want a certificate error", err)
	}
}

// TestRedfishNoAnswer talks to a port that accepts connections and never
// answers, as a hung BMC web server does.
func TestRedfishNoAnswer(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cfg := Config{
		Type: TypeRedfish, Address: l.Addr().String(), Username: mockUser,
		SecretsDir: secretsDir(t, mockPass), PasswordFile: "bmc.pass", Timeout: 100 * time.Millisecond, Retries: 1,
	}
	c, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.PowerStatus(context.Background())
	want := "redfish " + l.Addr().String() + ": power status: attempt 2 of 2: BMC did not answer within 100ms: "
	if !errors.Is(err, ErrNoAnswer) || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v\nwant prefix: %s", err, want)
	}
}

func TestParseSystemMember(t *testing.T) {
	t.Parallel()
	coll := `{"Members":[{"@odata.id":"/redfish/v1/Systems/1"},{"@odata.id":"/redfish/v1/Systems/2/"}]}`
	for _, tc := range []struct {
		name, data, id, want, wantErr string
	}{
		{name: "first", data: coll, want: "/redfish/v1/Systems/1"},
		{name: "by id", data: coll, id: "2", want: "/redfish/v1/Systems/2/"},
		{name: "missing id", data: coll, id: "3", wantErr: `no system "3" in the systems collection (has 1, 2)`},
		{name: "empty", data: `{"Members":[]}`, wantErr: "systems collection has no members"},
		{name: "foreign host", data: `{"Members":[{"@odata.id":"https://evil.example/redfish/v1/Systems/1"}]}`, wantErr: `systems collection member: "https://evil.example/redfish/v1/Systems/1" is not a path on the BMC`},
		{name: "not json", data: `<html>`, wantErr: "decode systems collection: invalid character '<' looking for beginning of value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSystemMember([]byte(tc.data), tc.id)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRedfishErrorText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body, want string }{
		{name: "extended info", body: `{"error":{"message":"general","@Message.ExtendedInfo":[{"Message":"first."},{"Message":"second."}]}}`, want: "first.; second."},
		{name: "message only", body: `{"error":{"code":"Base.1.0.GeneralError","message":"general"}}`, want: "general"},
		{name: "html", body: "<html>\n<body>Bad\tGateway</body>\n</html>", want: "<html> <body>Bad Gateway</body> </html>"},
		{name: "control characters", body: "a\x00b\x1b[31m", want: "a?b?[31m"},
		{name: "long", body: strings.Repeat("x", 400), want: strings.Repeat("x", maxErrorText) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redfishErrorText([]byte(tc.body)); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzRedfishDecode(f *testing.F) {
	for _, p := range []string{"testdata/redfish/v1/index.json", "testdata/redfish/v1/Systems/index.json", "testdata/redfish/v1/Systems/437XR1138R2/index.json"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"error":{"message":"m","@Message.ExtendedInfo":[{"Message":"x"}]}}`))
	f.Add([]byte(`{"Actions":{"#ComputerSystem.Reset":{"target":"//evil/x"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := parseSystem(data); err == nil {
			if tg := s.Actions.Reset.Target; tg != "" && (!strings.HasPrefix(tg, "/") || strings.HasPrefix(tg, "//")) {
				t.Fatalf("reset target %q is not a local path", tg)
			}
			_ = s.powerState().String()
			if rt := s.cycleResetType(); rt != "PowerCycle" && rt != "ForceRestart" {
				t.Fatalf("cycle reset type %q", rt)
			}
		}
		if p, err := parseSystemMember(data, ""); err == nil && (!strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//")) {
			t.Fatalf("member %q is not a local path", p)
		}
		if msg := redfishErrorText(data); len(msg) > maxErrorText+len("…") || strings.ContainsAny(msg, "\n\r\t") {
			t.Fatalf("error text %q is not one short line", msg)
		}
	})
}

// BenchmarkRedfishPowerStatus measures one status read (the system's path
// is found once) against the mockup server over TLS.
func BenchmarkRedfishPowerStatus(b *testing.B) {
	c := startRedfish(b, newFakeRedfish(b), nil)
	for b.Loop() {
		if _, err := c.PowerStatus(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
