package ociimage

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"caretaker/internal/needs"
)

// moduleRoot is the directory of go.mod above the test's.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}

// run runs a command with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, stdin io.Reader, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if out.Len() > 16<<10 {
		return out.String()[:16<<10] + "…", err
	}
	return out.String(), err
}

// TestImageE2E makes the real root with mmdebstrap (once: it is kept in
// the module's bin/image-root/, where `make image` keeps it, under its
// package list's key; cold it takes about 30 s), builds the real binaries
// and the image, extracts the image's file system and checks there that
// each binary is static and runs, in a chroot, as the non-root user; then
// `podman load` takes the archive.
func TestImageE2E(t *testing.T) {
	needs.Root(t, "mmdebstrap makes the image's root, and the check chroots into it")
	needs.Programs(t, "mmdebstrap", "chroot", "tar")
	podman := needs.Program(t, "podman")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	mod := moduleRoot(t)

	start := time.Now()
	root := DefaultRoot()
	base, made, err := MakeRoot(context.Background(), logger, root, filepath.Join(mod, "bin", "image-root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root %s: made %v in %s", filepath.Base(base), made, time.Since(start).Round(time.Second))

	// The real binaries, built as `make build` builds them.
	start = time.Now()
	bin := t.TempDir()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	for _, n := range []string{"caretaker", "caretaker-agent", "runbook"} {
		if out, err := run(t, 10*time.Minute, nil, "env", "CGO_ENABLED=0", goTool, "build", "-C", mod, "-o", filepath.Join(bin, n), "./cmd/"+n); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", n, err, out)
		}
	}
	t.Logf("binaries built in %s", time.Since(start).Round(time.Second))

	start = time.Now()
	img, err := Build(Spec{
		BaseTar: base, Files: Binaries(bin), Created: time.Unix(1800000000, 0),
		Version: "e2e", Revision: "e2e", Licenses: "LicenseRef-Proprietary", Architecture: runtime.GOARCH,
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("caretaker-e2e:%d", os.Getpid())
	archive := filepath.Join(t.TempDir(), "caretaker-image.tar")
	if err := Write(img, tag, archive); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %.1f MiB written in %s", float64(st.Size())/(1<<20), time.Since(start).Round(100*time.Millisecond))

	// The image's file system, read back from the archive and flattened.
	back, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	fsDir := t.TempDir()
	flat := mutate.Extract(back)
	out, err := run(t, 5*time.Minute, flat, "tar", "-C", fsDir, "--numeric-owner", "-xpf", "-")
	flat.Close()
	if err != nil {
		t.Fatalf("extract the image: %v\n%s", err, out)
	}

	for _, n := range []string{"caretaker", "caretaker-agent", "runbook"} {
		// Static: it needs no library of the root's.
		f, err := elf.Open(filepath.Join(fsDir, "usr/bin", n))
		if err != nil {
			t.Fatal(err)
		}
		libs, err := f.ImportedLibraries()
		interp := f.Section(".interp")
		f.Close()
		if err != nil || len(libs) > 0 || interp != nil {
			t.Errorf("/usr/bin/%s in the image links %q (interpreter %v, %v): want a static binary", n, libs, interp != nil, err)
		}
		// It runs there, as the image's default user.
		out, err := run(t, time.Minute, nil, "chroot", "--userspec=65532:65532", fsDir, "/usr/bin/"+n, "--version")
		if err != nil {
			t.Errorf("/usr/bin/%s --version as 65532 in the image: %v\n%s", n, err, out)
		}
	}
	for _, f := range []string{"etc/ssl/certs/ca-certificates.crt"} {
		if _, err := os.Stat(filepath.Join(fsDir, f)); err != nil {
			t.Errorf("the image lacks /%s: %v", f, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(fsDir, "etc/passwd")); err != nil || !strings.Contains(string(b), "caretaker:x:65532:65532:") {
		t.Errorf("/etc/passwd names no caretaker user 65532 (%v):\n%s", err, b)
	}
	for _, dir := range []string{"usr/share/man", "usr/share/locale", "var/lib/apt/lists", "var/cache/apt"} {
		var files []string
		filepath.WalkDir(filepath.Join(fsDir, dir), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasSuffix(p, "/lock") {
				files = append(files, p)
			}
			return nil
		})
		if len(files) > 0 {
			t.Errorf("/%s holds %d files, want none (e.g. %s)", dir, len(files), files[0])
		}
	}
	var docs []string
	filepath.WalkDir(filepath.Join(fsDir, "usr/share/doc"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != "copyright" {
			docs = append(docs, p)
		}
		return nil
	})
	if len(docs) > 0 {
		t.Errorf("/usr/share/doc holds %d files besides copyright files, e.g. %s", len(docs), docs[0])
	}

	// podman loads it (it cannot run containers on these machines, but
	// loading needs none).
	start = time.Now()
	if out, err := run(t, 3*time.Minute, nil, podman, "load", "-i", archive); err != nil {
		t.Fatalf("podman load -i: %v\n%s", err, out)
	}
	ref := "localhost/" + tag
	t.Cleanup(func() { run(t, time.Minute, nil, podman, "rmi", "-f", ref) })
	out, err = run(t, time.Minute, nil, podman, "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}} {{index .Config.Labels \"org.opencontainers.image.title\"}}", ref)
	if err != nil || strings.TrimSpace(out) != `65532:65532 ["/usr/bin/caretaker"] caretaker` {
		t.Errorf("podman image inspect %s: %v\n%s", ref, err, out)
	}
	t.Logf("podman load in %s", time.Since(start).Round(100*time.Millisecond))
}
