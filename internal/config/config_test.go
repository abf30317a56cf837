package config

import (
	"caretaker/internal/golden"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the .err golden files")

func TestLoadGood(t *testing.T) {
	golden.GoodFiles(t, "testdata/good/*.yml", func(path string) error {
		_, err := Load(path)
		return err
	})
}

func TestLoadFull(t *testing.T) {
	c, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(c.Hosts), 2; got != want {
		t.Fatalf("hosts = %d, want %d", got, want)
	}
	if c.Prometheus.Retention != 360*time.Hour {
		t.Errorf("retention = %s", c.Prometheus.Retention)
	}
	if got, want := c.Path(c.Remediation.PolicyFile), "testdata/good/policy.yml"; got != want {
		t.Errorf("policy path = %q, want %q", got, want)
	}
	if want := (Console{Enabled: true, GrafanaURL: "http://grafana.example:3000", SessionTTL: 12 * time.Hour}); c.Console != want {
		t.Errorf("console = %+v, want %+v", c.Console, want)
	}
}

func TestDefaultsApplied(t *testing.T) {
	c, err := Load("testdata/good/minimal.yml")
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	if !reflect.DeepEqual(c.Prometheus, d.Prometheus) || c.DataDir != d.DataDir || !reflect.DeepEqual(c.Remediation, d.Remediation) {
		t.Errorf("defaults not applied: %+v", c)
	}
}

// Each bad file's exact error is kept beside it in a .err golden file.
func TestLoadBad(t *testing.T) {
	golden.BadFiles(t, "testdata/bad/*.yml", func(path string) error {
		_, err := Load(path)
		return err
	}, *update)
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tok")
	if err := os.WriteFile(p, []byte("  "+strongA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecret(p); err != nil || s != strongA {
		t.Fatalf("ReadSecret = %q, %v", s, err)
	}
	// Weak tokens and files others may read are refused.
	weak := filepath.Join(dir, "weak")
	os.WriteFile(weak, []byte("s3cret\n"), 0o600)
	if _, err := ReadSecret(weak); err == nil || !strings.Contains(err.Error(), "the token has 6 characters, a token needs at least 32") {
		t.Fatalf("weak token: %v", err)
	}
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte(strongA), 0o600)
	os.Chmod(open, 0o644)
	if _, err := ReadSecret(open); err == nil || !strings.Contains(err.Error(), open+": mode 0644: a secret file must not be readable by group or others (chmod 600 "+open+")") {
		t.Fatalf("world-readable token file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := ReadSecret(empty); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty secret: %v", err)
	}
}

// The example shipped in deploy/ must stay a valid configuration.
func TestDeployExample(t *testing.T) {
	if _, err := Load("../../deploy/server.example.yml"); err != nil {
		t.Fatal(err)
	}
}

// Tokens of 32 characters, the least ReadSecret takes.
const (
	strongA = "a-secret-0123456789abcdef01234567"
	strongB = "b-secret-0123456789abcdef01234567"
)

func TestAPICredentials(t *testing.T) {
	dir := t.TempDir()
	for name, secret := range map[string]string{"admin.token": strongA + "\n", "alice.token": strongB, "copy.token": " " + strongA + " "} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(secret), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		yml     string
		want    []Credential
		wantErr string
	}{
		{name: "admin file and named tokens",
			yml:  "api:\n  token_file: admin.token\n  tokens:\n    - {name: alice, role: operator, token_file: alice.token}\n",
			want: []Credential{{"admin", "admin", strongA}, {"alice", "operator", strongB}}},
		{name: "named tokens only",
			yml:  "api:\n  tokens:\n    - {name: alice, role: viewer, token_file: alice.token}\nremediation: {webhook: {token_file: w.token}}\n",
			want: []Credential{{"alice", "viewer", strongB}}},
		{name: "same token twice",
			yml:     "api:\n  token_file: admin.token\n  tokens:\n    - {name: alice, role: viewer, token_file: copy.token}\n",
			wantErr: "api.tokens[0].token_file: holds the same token as api.token_file; give every token its own value"},
		{name: "missing file",
			yml:     "api:\n  tokens:\n    - {name: alice, role: viewer, token_file: nope.token}\nremediation: {webhook: {token_file: w.token}}\n",
			wantErr: "api.tokens[0].token_file: read secret: open " + filepath.Join(dir, "nope.token")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(filepath.Join(dir, "server.yml"), []byte(tc.yml))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.APICredentials()
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "a-secret") {
					t.Errorf("error reveals the secret: %v", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("APICredentials = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
