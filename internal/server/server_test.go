package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/config"
)

// A server with a broken policy, rule file or token refuses to start and
// says which file, line and field.
func TestNewRefusesBrokenInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("api.token", "tok\n")
	write("empty.token", "")
	badPolicy := write("policy.yml", "rules:\n  - name: r\n    match: {alertname: GuestCrashed}\n    action: restrat-vm\n")
	rulesDir := filepath.Join(dir, "rules")
	os.Mkdir(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "x.rules.yml"), []byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n"), 0o600)

	for _, tc := range []struct {
		name     string
		config   string
		rulesDir string
		want     string
	}{
		{"bad policy", "api: {token_file: api.token}\nremediation: {policy_file: policy.yml}\n", "",
			badPolicy + ":4: rules[0].action: unknown action \"restrat-vm\""},
		{"empty token", "api: {token_file: empty.token}\n", "", "empty.token: file is empty"},
		{"missing token", "api: {token_file: nope.token}\n", "", "nope.token"},
		{"bad rules", "api: {token_file: api.token}\n", rulesDir, "x.rules.yml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgPath := write("server.yml", "data_dir: data\n"+tc.config)
			cfg, err := config.Load(cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(context.Background(), Options{Config: cfg, RulesDir: tc.rulesDir, Logger: slog.New(slog.DiscardHandler)})
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}
