package inventory

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"caretaker/internal/kv"
	"caretaker/internal/who"
)

const newHostBody = `{"name": "kvm-c1", "macs": ["52:54:00:CC:00:01"], "role": "worker", "labels": {"rack": "c"},
	"bmc": {"type": "redfish", "address": "https://192.0.2.9", "username": "admin", "password_file": "kvm-c1.bmc", "timeout": "3s"}}`

// withField returns newHostBody with one more top-level field.
func withField(field string) string {
	return strings.Replace(newHostBody, `"name"`, field+`, "name"`, 1)
}

func TestHandler(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		status                   int
		err                      string   // the exact error, for 4xx and 5xx
		hosts                    []string // the names GET /api/v1/hosts answers afterwards
	}{
		{name: "list", method: "GET", path: "/api/v1/hosts", status: 200},
		{name: "get a file host", method: "GET", path: "/api/v1/hosts/kvm-a1", status: 200},
		{name: "get an API host", method: "GET", path: "/api/v1/hosts/api-1", status: 200},
		{name: "get an unknown host", method: "GET", path: "/api/v1/hosts/nope", status: 404,
			err: "host nope is not in the inventory"},
		{name: "add", method: "POST", path: "/api/v1/hosts", body: newHostBody, status: 201,
			hosts: []string{"api-1", "kvm-a1", "kvm-b1", "kvm-c1", "mon-1"}},
		{name: "add an invalid host", method: "POST", path: "/api/v1/hosts", status: 400,
			body: strings.Replace(newHostBody, `"52:54:00:CC:00:01"`, `"zz"`, 1),
			err:  `macs[0]: "zz" is not a MAC address`},
		{name: "add with an unknown field", method: "POST", path: "/api/v1/hosts", status: 400,
			body: withField(`"rack": "c"`), err: `request body: unknown field "rack"`},
		{name: "add with a password", method: "POST", path: "/api/v1/hosts", status: 400,
			body: strings.Replace(newHostBody, `"username"`, `"password": "hunter2", "username"`, 1),
			err:  `request body: unknown field "password": put the password in a file in the server's BMC secrets directory (provisioner.bmc.secrets_dir) and give its name as bmc.password_file`},
		{name: "add with a password file outside the secrets directory", method: "POST", path: "/api/v1/hosts", status: 400,
			body: strings.Replace(newHostBody, "kvm-c1.bmc", "/etc/shadow", 1),
			err:  `bmc.password_file: "/etc/shadow": password_file names a file inside the BMC secrets directory (provisioner.bmc.secrets_dir): a file name or a relative path without "..", not an absolute path`},
		{name: "add with a password file above the secrets directory", method: "POST", path: "/api/v1/hosts", status: 400,
			body: strings.Replace(newHostBody, "kvm-c1.bmc", "../../root/.ssh/id_ed25519", 1),
			err:  `bmc.password_file: "../../root/.ssh/id_ed25519": password_file names a file inside the BMC secrets directory (provisioner.bmc.secrets_dir): a file name or a relative path without "..", not an absolute path`},
		{name: "add with a wrong type", method: "POST", path: "/api/v1/hosts", status: 400,
			body: withField(`"cpus": "64"`), err: `request body: cpus: cannot take a JSON string, want an integer`},
		{name: "add with a bad timeout", method: "POST", path: "/api/v1/hosts", status: 400,
			body: strings.Replace(newHostBody, `"3s"`, `"soon"`, 1), err: `request body: bmc.timeout: "soon" is not a duration such as "10s"`},
		{name: "add malformed JSON", method: "POST", path: "/api/v1/hosts", status: 400,
			body: `{"name": `, err: "request body: unexpected EOF"},
		{name: "add an array", method: "POST", path: "/api/v1/hosts", status: 400,
			body: `[]`, err: "request body: want a host as a JSON object"},
		{name: "add with data after the host", method: "POST", path: "/api/v1/hosts", status: 400,
			body: newHostBody + `{}`, err: "request body: unexpected data after the JSON object"},
		{name: "add nothing", method: "POST", path: "/api/v1/hosts", status: 400,
			err: "request body: empty; want a host as a JSON object"},
		{name: "add too much", method: "POST", path: "/api/v1/hosts", status: 413,
			body: withField(`"serial": "` + strings.Repeat("x", maxBody) + `"`), err: "request body: larger than 65536 bytes"},
		{name: "add a file host's MAC", method: "POST", path: "/api/v1/hosts", status: 409,
			body: strings.Replace(newHostBody, `52:54:00:CC:00:01`, `52:54:00:aa:bb:11`, 1),
			err:  "macs[0]: 52:54:00:aa:bb:11 is a MAC of host kvm-b1 (in the inventory file)"},
		{name: "add an API host's name", method: "POST", path: "/api/v1/hosts", status: 409,
			body: strings.Replace(newHostBody, `kvm-c1"`, `api-1"`, 1),
			err:  "name: host api-1 already exists (added through the API)"},
		{name: "remove an API host", method: "DELETE", path: "/api/v1/hosts/api-1", status: 204,
			hosts: []string{"kvm-a1", "kvm-b1", "mon-1"}},
		{name: "remove a file host", method: "DELETE", path: "/api/v1/hosts/kvm-a1", status: 409,
			err: "host kvm-a1 is defined in the inventory file; remove it there"},
		{name: "remove an unknown host", method: "DELETE", path: "/api/v1/hosts/nope", status: 404,
			err: "host nope is not in the inventory"},
		{name: "wrong method", method: "PUT", path: "/api/v1/hosts/api-1", status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, fileInventory(t))
			if err := s.Add(validHost("api-1", "52:54:00:cc:00:99")); err != nil {
				t.Fatal(err)
			}
			h := Handler(s)
			rec := serve(h, tt.method, tt.path, tt.body)
			if rec.Code != tt.status {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, rec.Code, rec.Body, tt.status)
			}
			if tt.err != "" {
				var e struct{ Error string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error != tt.err {
					t.Errorf("error = %q (%v), want %q", e.Error, err, tt.err)
				}
			}
			if tt.hosts != nil {
				if got := listNames(t, h); !reflect.DeepEqual(got, tt.hosts) {
					t.Errorf("hosts afterwards = %v, want %v", got, tt.hosts)
				}
			}
		})
	}
}

func serve(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func listNames(t *testing.T, h http.Handler) []string {
	t.Helper()
	rec := serve(h, "GET", "/api/v1/hosts", "")
	var list struct{ Hosts []Host }
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatalf("list hosts: %d %v: %s", rec.Code, err, rec.Body)
	}
	var names []string
	for _, h := range list.Hosts {
		names = append(names, h.Name)
	}
	return names
}

// The answers carry the host as stored and the file's field names.
func TestHandlerBodies(t *testing.T) {
	h := Handler(newStore(t, fileInventory(t)))
	rec := serve(h, "POST", "/api/v1/hosts", newHostBody)
	if rec.Code != 201 || rec.Header().Get("Location") != "/api/v1/hosts/kvm-c1" {
		t.Fatalf("POST = %d, Location %q: %s", rec.Code, rec.Header().Get("Location"), rec.Body)
	}
	want := `{
  "name": "kvm-c1",
  "macs": [
    "52:54:00:cc:00:01"
  ],
  "bmc": {
    "type": "redfish",
    "address": "https://192.0.2.9",
    "username": "admin",
    "password_file": "kvm-c1.bmc",
    "timeout": "3s"
  },
  "role": "worker",
  "labels": {
    "rack": "c"
  },
  "agent": "kvm-c1:9301"
}
`
	if got := rec.Body.String(); got != want {
		t.Errorf("POST answered\n%s\nwant\n%s", got, want)
	}
	if got := serve(h, "GET", "/api/v1/hosts/kvm-c1", "").Body.String(); got != want {
		t.Errorf("GET answered\n%s\nwant\n%s", got, want)
	}
	if got := serve(h, "GET", "/api/v1/hosts/kvm-b1", "").Body.String(); !strings.Contains(got, `"insecure": true`) {
		t.Errorf("GET of a file host lacks its fields:\n%s", got)
	}
}

// The API shows the password file's path, never its content.
func TestHandlerNoPassword(t *testing.T) {
	dir := t.TempDir()
	pw := "rack-c/kvm-c1.bmc"
	if err := os.MkdirAll(filepath.Join(dir, "rack-c"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, pw), []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := Handler(newStore(t, nil))
	body := strings.Replace(newHostBody, "kvm-c1.bmc", pw, 1)
	for _, rec := range []*httptest.ResponseRecorder{
		serve(h, "POST", "/api/v1/hosts", body),
		serve(h, "GET", "/api/v1/hosts/kvm-c1", ""),
		serve(h, "GET", "/api/v1/hosts", ""),
	} {
		if got := rec.Body.String(); strings.Contains(got, "s3cret") || !strings.Contains(got, pw) {
			t.Errorf("answer %d holds the password or lacks the path:\n%s", rec.Code, got)
		}
	}
}

// A store that cannot be read answers 500 and says why.
func TestHandlerStorageFailure(t *testing.T) {
	db := openDB(t)
	s, err := NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	h := Handler(s)
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/api/v1/hosts", ""},
		{"GET", "/api/v1/hosts/x", ""},
		{"POST", "/api/v1/hosts", newHostBody},
		{"DELETE", "/api/v1/hosts/x", ""},
	} {
		rec := serve(h, r.method, r.path, r.body)
		if rec.Code != 500 || !strings.Contains(rec.Body.String(), "database not open") {
			t.Errorf("%s %s on a closed database = %d %s, want 500 naming the cause", r.method, r.path, rec.Code, rec.Body)
		}
	}
}

// FuzzPostHost wants every body answered with 201, 400, 409 or 413 and a
// JSON body, never a 500; and a host that was added to be readable and
// removable.
func FuzzPostHost(f *testing.F) {
	f.Add(newHostBody)
	f.Add(withField(`"cpus": -1`))
	f.Add(`{"name": "x", "macs": ["52:54:00:aa:bb:11"]}`)
	f.Add(`{"bmc": {"timeout": "1h"}, "labels": {"__a": ""}}`)
	f.Add(`null`)
	s := newStore(f, fileInventory(f))
	h := Handler(s)
	f.Fuzz(func(t *testing.T, body string) {
		rec := serve(h, "POST", "/api/v1/hosts", body)
		switch rec.Code {
		case 201, 400, 409, 413:
		default:
			t.Fatalf("POST %q = %d %s", body, rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("POST %q answered non-JSON %q", body, rec.Body)
		}
		if rec.Code != 201 {
			return
		}
		var added Host
		if err := json.Unmarshal(rec.Body.Bytes(), &added); err != nil {
			t.Fatalf("201 body: %v", err)
		}
		path := rec.Header().Get("Location")
		if get := serve(h, "GET", path, ""); get.Code != 200 {
			t.Fatalf("GET %s after adding = %d %s", path, get.Code, get.Body)
		}
		if del := serve(h, "DELETE", path, ""); del.Code != 204 {
			t.Fatalf("DELETE %s = %d %s", path, del.Code, del.Body)
		}
	})
}

// Removing a host through the API keeps a record of it: who removed it is
// the token's identity (here from the test's who.Func), the client's
// author only as on behalf of; the comment is kept; the record survives
// reopening the store and viewers read it with ?removed=true.
func TestHandlerRecordsRemoval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "caretaker.db")
	db, err := kv.OpenBolt(path, "test database")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	added := &who.By{Name: "ada", Role: "admin", At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	h := validHost("kvm-c1", "52:54:00:cc:00:01")
	h.Serial = "CZ-C1"
	h.AddedBy = added
	if err := s.Add(h); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	tokens := map[string]string{"ada": "admin", "vera": "viewer"}
	handler := Handler(s, HandlerOptions{Who: func(r *http.Request, author, comment string) who.By {
		name := r.Header.Get("X-Token")
		return who.By{Name: name, Role: tokens[name], OnBehalfOf: author, Comment: comment, At: at}
	}})
	do := func(token, method, path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("X-Token", token)
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		return w
	}
	for _, tt := range []struct{ body, err string }{
		{`{"reason": "x"}`, `request body: unknown field "reason"`},
		{`{"comment": "a\u202eb"}`, "comment: control character U+202E at byte 1 is not allowed"},
		{`{"author": "a\nb"}`, "author: control character U+000A at byte 1 is not allowed"},
		{`[]`, "request body: cannot unmarshal array into Go value of type inventory.RemoveRequest"},
	} {
		w := do("ada", "DELETE", "/api/v1/hosts/kvm-c1", tt.body)
		var e struct{ Error string }
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != http.StatusBadRequest || e.Error != tt.err {
			t.Errorf("DELETE with %s = %d %s, want 400 %q", tt.body, w.Code, w.Body, tt.err)
		}
	}
	if w := do("ada", "DELETE", "/api/v1/hosts/kvm-c1", `{"comment": "rack swap", "author": "mallory"}`); w.Code != http.StatusNoContent {
		t.Fatalf("DELETE = %d %s, want 204", w.Code, w.Body)
	}
	db.Close()

	db, err = kv.OpenBolt(path, "test database")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if s, err = NewStore(db, nil); err != nil {
		t.Fatal(err)
	}
	want := []Removed{{
		Name: "kvm-c1", Serial: "CZ-C1", MACs: []string{"52:54:00:cc:00:01"}, AddedBy: added,
		RemovedBy: &who.By{Name: "ada", Role: "admin", OnBehalfOf: "mallory", Comment: "rack swap", At: at},
		RemovedAt: at,
	}}
	if got, err := s.Removed(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Removed after reopening = %+v, %v; want %+v", got, err, want)
	}
	handler = Handler(s)
	w := do("vera", "GET", "/api/v1/hosts?removed=true", "")
	var list struct{ Removed []Removed }
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || !reflect.DeepEqual(list.Removed, want) {
		t.Errorf("GET ?removed=true = %d %s (%v), want %+v", w.Code, w.Body, err, want)
	}
	if !strings.Contains(w.Body.String(), `"on_behalf_of": "mallory"`) || strings.Contains(w.Body.String(), `"name": "mallory"`) {
		t.Errorf("the record does not keep mallory only as on behalf of:\n%s", w.Body)
	}
	if w := do("vera", "GET", "/api/v1/hosts?removed=yes", ""); w.Code != http.StatusBadRequest {
		t.Errorf("GET ?removed=yes = %d %s, want 400", w.Code, w.Body)
	}
	if got := listNames(t, handler); got != nil {
		t.Errorf("hosts after the removal = %v, want none", got)
	}
}

// The store keeps the last MaxRemoved records of removed hosts, and a
// DELETE without a body (Remove) records the removal with no one.
func TestStoreRemovedBounded(t *testing.T) { testStoreRemovedBounded(t, newStore) }

func testStoreRemovedBounded(t *testing.T, newStore storeMaker) {
	s := newStore(t, nil)
	for i := range MaxRemoved + 3 {
		name := fmt.Sprintf("h%04d", i)
		if err := s.Add(validHost(name, fmt.Sprintf("52:54:00:cc:%02x:%02x", i/256, i%256))); err != nil {
			t.Fatal(err)
		}
		if err := s.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.Removed()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != MaxRemoved || recs[0].Name != "h0003" || recs[len(recs)-1].Name != fmt.Sprintf("h%04d", MaxRemoved+2) {
		t.Fatalf("kept %d records, %s to %s; want %d, h0003 to h%04d", len(recs), recs[0].Name, recs[len(recs)-1].Name, MaxRemoved, MaxRemoved+2)
	}
	if r := recs[0]; r.RemovedBy != nil || r.RemovedAt.IsZero() {
		t.Errorf("Remove recorded %+v, want no one and a time", r)
	}
}
