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
	if err := os.WriteFile(p, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecret(p); err != nil || s != "s3cret" {
		t.Fatalf("ReadSecret = %q, %v", s, err)
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
