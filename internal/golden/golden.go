// Package golden holds the test helpers the collectors share: golden-file
// comparison and promtool's check of a metrics exposition.
package golden

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"caretaker/internal/needs"
)

// Compare fails t when got differs from the golden file at path; with
// update it rewrites the file instead.
func Compare(t testing.TB, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("update golden file: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run with -update to accept it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// Encode writes metric families in the text exposition format, sorted by
// name so the output is stable.
func Encode(t testing.TB, mfs []*dto.MetricFamily) []byte {
	t.Helper()
	sort.Slice(mfs, func(i, j int) bool { return mfs[i].GetName() < mfs[j].GetName() })
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatalf("encode %s: %v", mf.GetName(), err)
		}
	}
	return buf.Bytes()
}

// CheckMetrics runs `promtool check metrics` on an exposition and fails t
// on any complaint. It needs promtool (see package needs).
func CheckMetrics(t testing.TB, exposition []byte) {
	t.Helper()
	promtool := needs.Program(t, "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if len(out) > 64<<10 {
		out = out[:64<<10]
	}
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// BadFiles loads every file matching pattern with load, which must fail,
// and compares each error's text with the .err golden file beside the
// input: the exact message an operator gets is part of the contract.
func BadFiles(t *testing.T, pattern string, load func(path string) error, update bool) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s", pattern)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			err := load(f)
			if err == nil {
				t.Fatal("loading succeeded, want an error")
			}
			Compare(t, strings.TrimSuffix(f, filepath.Ext(f))+".err", []byte(err.Error()+"\n"), update)
		})
	}
}

// GoodFiles loads every file matching pattern with load, which must succeed.
func GoodFiles(t *testing.T, pattern string, load func(path string) error) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s", pattern)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if err := load(f); err != nil {
				t.Fatalf("load: %v", err)
			}
		})
	}
}

// ConfigFiles is the test of a configuration loader: every
// testdata/good/*.yml loads, every testdata/bad/*.yml fails with the error
// in its .err golden file, and a missing file is a not-exist error.
func ConfigFiles(t *testing.T, load func(path string) error, update bool) {
	t.Helper()
	t.Run("good", func(t *testing.T) { GoodFiles(t, "testdata/good/*.yml", load) })
	t.Run("bad", func(t *testing.T) { BadFiles(t, "testdata/bad/*.yml", load, update) })
	t.Run("missing", func(t *testing.T) {
		if err := load(filepath.Join(t.TempDir(), "absent.yml")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("loading a missing file: %v, want a not-exist error", err)
		}
	})
}
