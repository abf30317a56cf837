package fleet

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/api"
	"caretaker/internal/kv"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/inventory"
)

// mounted serves the provisioner's routes as the server does, with one
// token per role, and one host in the inventory.
func mounted(t *testing.T) http.Handler {
	t.Helper()
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.NewStore(db, func() *inventory.Inventory { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(inventory.Host{Name: "hv-a1", MACs: []string{"52:54:00:aa:00:01"}, Role: inventory.RoleWorker,
		BMC: bmc.Config{Type: "ipmi", Address: "192.0.2.10", Username: "root", PasswordFile: "hv-a1.pass"}}); err != nil {
		t.Fatal(err)
	}
	auth, err := api.NewAuthenticator([]api.Token{
		{Name: "vera", Role: api.RoleViewer, Secret: "view-tok"},
		{Name: "olga", Role: api.RoleOperator, Secret: "op-tok"},
		{Name: "root", Role: api.RoleAdmin, Secret: "admin-tok"},
		{Name: "am", Role: api.RoleWebhook, Secret: "am-tok"},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &Provisioner{log: slog.New(slog.DiscardHandler), inv: inv}
	mux := http.NewServeMux()
	p.Mount(mux, auth)
	return mux
}

func call(h http.Handler, token, method, path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// The provisioner's routes take their roles from the API's route table:
// an operator may not delete a cluster nor reprovision a host, the
// webhook's token may read nothing.
func TestMountRoles(t *testing.T) {
	h := mounted(t)
	for _, tc := range []struct {
		token, method, path, body string
		want                      string
	}{
		{"op-tok", "DELETE", "/api/v1/clusters/lab", "", `token "olga" has role operator; deleting a guest cluster needs admin`},
		{"op-tok", "POST", "/api/v1/provisioner/hosts/hv-a1/reprovision", `{"comment":"x"}`, `token "olga" has role operator; reprovisioning a host needs admin`},
		{"op-tok", "POST", "/api/v1/provisioner/hosts/hv-a1/provision", `{"comment":"x"}`, `provisioning a host needs admin`},
		{"view-tok", "POST", "/api/v1/clusters", `{}`, `token "vera" has role viewer; creating a guest cluster needs operator`},
		{"am-tok", "GET", "/api/v1/hosts", "", `token "am" has role webhook; reading the inventory needs viewer`},
	} {
		w := call(h, tc.token, tc.method, tc.path, tc.body)
		if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), strings.ReplaceAll(tc.want, `"`, `\"`)) {
			t.Errorf("%s %s %s: %d %s, want 403 with %q", tc.token, tc.method, tc.path, w.Code, w.Body, tc.want)
		}
	}
}

// Viewers see no BMC address, user or password file; operators the
// address and user; admins also the password file's path.
func TestMountBMCView(t *testing.T) {
	h := mounted(t)
	for _, tc := range []struct {
		token     string
		see, hide []string
	}{
		{"view-tok", []string{`"type": "ipmi"`}, []string{"192.0.2.10", `"root"`, "hv-a1.pass"}},
		{"op-tok", []string{"192.0.2.10", `"username": "root"`}, []string{"hv-a1.pass"}},
		{"admin-tok", []string{"192.0.2.10", `"username": "root"`, "hv-a1.pass"}, nil},
	} {
		for _, path := range []string{"/api/v1/hosts", "/api/v1/hosts/hv-a1"} {
			w := call(h, tc.token, "GET", path, "")
			body := w.Body.String()
			if w.Code != http.StatusOK {
				t.Fatalf("%s GET %s: %d %s", tc.token, path, w.Code, body)
			}
			for _, s := range tc.see {
				if !strings.Contains(body, s) {
					t.Errorf("%s GET %s lacks %s:\n%s", tc.token, path, s, body)
				}
			}
			for _, s := range tc.hide {
				if strings.Contains(body, s) {
					t.Errorf("%s GET %s shows %s:\n%s", tc.token, path, s, body)
				}
			}
		}
	}
}

// A host's BMC password is read from provisioner.bmc.secrets_dir, and from
// nowhere else.
func TestBMCPasswordFromSecretsDir(t *testing.T) {
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.NewStore(db, func() *inventory.Inventory { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(inventory.Host{Name: "hv-a1", MACs: []string{"52:54:00:aa:00:01"}, Role: inventory.RoleWorker,
		BMC: bmc.Config{Type: "ipmi", Address: "192.0.2.10", Username: "root", PasswordFile: "hv-a1.pass"}}); err != nil {
		t.Fatal(err)
	}
	secrets := t.TempDir()
	p := &Provisioner{log: slog.New(slog.DiscardHandler), inv: inv, bmcSecrets: secrets}
	if _, err := p.bmc("hv-a1"); err == nil || !strings.Contains(err.Error(), "open "+filepath.Join(secrets, "hv-a1.pass")+": no such file") {
		t.Fatalf("bmc without the password file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "hv-a1.pass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := p.bmc("hv-a1"); err != nil {
		t.Fatalf("bmc: %v", err)
	}
}
