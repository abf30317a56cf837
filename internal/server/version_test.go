package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"caretaker/internal/api"
	"caretaker/internal/version"
)

// GET /api/v1/status names the server's version (`caretaker version`).
func TestStatusVersion(t *testing.T) {
	defer func(v string) { version.Version = v }(version.Version)
	version.Version = "v9.8.7-1-gabcdef0"
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api.token"), []byte(testToken("tok")+"\n"), 0o600)
	s := startServer(t, dir, "data_dir: data\napi: {token_file: api.token}\n", nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+testToken("tok"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st api.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	if st.Version != version.Version {
		t.Fatalf("version %q, want %q", st.Version, version.Version)
	}
}
