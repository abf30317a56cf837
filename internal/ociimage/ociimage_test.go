package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file of a tar stream as the tests compare it.
type entry struct {
	typ      byte
	mode     int64
	uid, gid int
	mtime    time.Time
	body     string
	link     string
}

// readTar reads a whole tar stream.
func readTar(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	tr := tar.NewReader(r)
	m := map[string]entry{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := m[h.Name]; dup {
			t.Errorf("%s twice in one layer", h.Name)
		}
		m[h.Name] = entry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, mtime: h.ModTime, body: string(b), link: h.Linkname}
	}
}

// writeRoot writes a small root as mmdebstrap does: "./" paths, /dev with
// device nodes and a symlink, a hard link.
func writeRoot(t *testing.T, file string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len("root:x:0:0::/root:/bin/sh\n"))},
		{Name: "./usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2},
		{Name: "./usr/bin/dash", Typeflag: tar.TypeLink, Linkname: "./usr/bin/sh"},
		{Name: "./bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"},
		{Name: "./dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "./dev/fd", Typeflag: tar.TypeSymlink, Linkname: "/proc/self/fd"},
		{Name: "./dev/pts/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./run/initctl", Typeflag: tar.TypeFifo, Mode: 0o600},
	} {
		h.ModTime = mtime
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "./etc/passwd":
			tw.Write([]byte("root:x:0:0::/root:/bin/sh\n"))
		case "./usr/bin/sh":
			tw.Write([]byte("sh"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeBinaries writes three small files named as the binaries.
func fakeBinaries(t *testing.T, dir string) {
	t.Helper()
	for _, n := range []string{"caretaker", "caretaker-agent", "runbook"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\necho "+n+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

func testSpec(t *testing.T) Spec {
	t.Helper()
	dir := t.TempDir()
	writeRoot(t, filepath.Join(dir, "root.tar"))
	fakeBinaries(t, dir)
	return Spec{
		BaseTar:      filepath.Join(dir, "root.tar"),
		Files:        Binaries(dir),
		Created:      time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		Version:      "1.2.3",
		Revision:     "0123456789abcdef0123456789abcdef01234567",
		Source:       "https://example.org/caretaker.git",
		Licenses:     "LicenseRef-Proprietary",
		Architecture: "amd64",
	}
}

// TestBuild writes an image of a small root and fake binaries and reads
// the archive back: the configuration, the manifest's tag and both layers.
func TestBuild(t *testing.T) {
	s := testSpec(t)
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "image.tar")
	if err := Write(img, "caretaker:1.2.3", file); err != nil {
		t.Fatal(err)
	}

	// The archive's manifest.json, as docker and podman load it.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var manifest tarball.Manifest
	for name, e := range readTar(t, bytes.NewReader(raw)) {
		if name == "manifest.json" {
			if err := json.Unmarshal([]byte(e.body), &manifest); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{"caretaker:1.2.3"}) || len(manifest[0].Layers) != 2 {
		t.Fatalf("manifest.json = %+v, want one image tagged caretaker:1.2.3 with 2 layers", manifest)
	}

	back, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	for _, chk := range []struct {
		what      string
		got, want any
	}{
		{"entrypoint", c.Entrypoint, []string{"/usr/bin/caretaker"}},
		{"cmd", c.Cmd, []string{"server", "--config.file", "/etc/caretaker/server.yml", "--web.listen-address", ":9300"}},
		{"user", c.User, "65532:65532"},
		{"exposed ports", c.ExposedPorts, map[string]struct{}{"9300/tcp": {}, "9301/tcp": {}}},
		{"working dir", c.WorkingDir, "/var/lib/caretaker"},
		{"volumes", c.Volumes, map[string]struct{}{"/var/lib/caretaker": {}}},
		{"env", c.Env, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		{"created", cf.Created.Time.UTC(), s.Created},
		{"os/arch", cf.OS + "/" + cf.Architecture, "linux/amd64"},
		{"history", len(cf.History), 2},
		{"diff ids", len(cf.RootFS.DiffIDs), 2},
	} {
		if !reflect.DeepEqual(chk.got, chk.want) {
			t.Errorf("%s = %#v, want %#v", chk.what, chk.got, chk.want)
		}
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":    "caretaker",
		"org.opencontainers.image.version":  "1.2.3",
		"org.opencontainers.image.revision": s.Revision,
		"org.opencontainers.image.source":   s.Source,
		"org.opencontainers.image.licenses": "LicenseRef-Proprietary",
		"org.opencontainers.image.created":  "2026-12-01T10:00:00Z",
	}
	for k, v := range wantLabels {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	if d := c.Labels["org.opencontainers.image.description"]; !strings.Contains(d, "root") || !strings.Contains(d, "agent") {
		t.Errorf("description %q does not say the agent needs root", d)
	}

	layers, err := back.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 2 {
		t.Fatalf("%d layers, want 2", len(layers))
	}
	base := layerFiles(t, layers[0])
	wantBase := []string{"bin", "dev/", "etc/", "etc/passwd", "usr/", "usr/bin/", "usr/bin/dash", "usr/bin/sh"}
	if got := keys(base); !reflect.DeepEqual(got, wantBase) {
		t.Errorf("base layer holds %q, want %q (no ./, no device nodes, FIFOs or /dev entries)", got, wantBase)
	}
	if e := base["usr/bin/dash"]; e.typ != tar.TypeLink || e.link != "usr/bin/sh" {
		t.Errorf("hard link usr/bin/dash = %+v, want a link to usr/bin/sh", e)
	}
	if e := base["etc/passwd"]; e.body != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("etc/passwd = %q", e.body)
	}

	bins := layerFiles(t, layers[1])
	wantBins := []string{"etc/caretaker/", "usr/bin/caretaker", "usr/bin/caretaker-agent", "usr/bin/runbook", "var/lib/caretaker/"}
	if got := keys(bins); !reflect.DeepEqual(got, wantBins) {
		t.Errorf("binaries layer holds %q, want %q", got, wantBins)
	}
	for _, n := range []string{"caretaker", "caretaker-agent", "runbook"} {
		e := bins["usr/bin/"+n]
		if e.typ != tar.TypeReg || e.mode != 0o755 || e.uid != 0 || e.gid != 0 || !e.mtime.Equal(s.Created) || e.body != "#!/bin/sh\necho "+n+"\n" {
			t.Errorf("usr/bin/%s = %+v, want root's 0755 file of the binary, at the created time", n, e)
		}
	}
	if e := bins["var/lib/caretaker/"]; e.typ != tar.TypeDir || e.uid != NonRootUID || e.gid != NonRootUID || e.mode != 0o750 {
		t.Errorf("var/lib/caretaker/ = %+v, want the non-root user's 0750 directory", e)
	}
	if e := bins["etc/caretaker/"]; e.typ != tar.TypeDir || e.uid != 0 || e.mode != 0o755 {
		t.Errorf("etc/caretaker/ = %+v, want root's 0755 directory", e)
	}
}

func layerFiles(t *testing.T, l v1.Layer) map[string]entry {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return readTar(t, rc)
}

func keys(m map[string]entry) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestBuildReproducible: the same inputs give the same image, byte for
// byte; another created time gives another.
func TestBuildReproducible(t *testing.T) {
	s := testSpec(t)
	digest := func(s Spec) (string, []byte) {
		img, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "image.tar")
		if err := Write(img, "caretaker:1.2.3", file); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return d.String(), b
	}
	d1, b1 := digest(s)
	d2, b2 := digest(s)
	if d1 != d2 || !bytes.Equal(b1, b2) {
		t.Errorf("two builds of the same inputs differ: %s, %s", d1, d2)
	}
	s.Created = s.Created.Add(time.Hour)
	if d3, _ := digest(s); d3 == d1 {
		t.Error("another created time gave the same image")
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"no binary", func(s *Spec) { s.Files[0].Source += ".missing" }, "make build first"},
		{"no time", func(s *Spec) { s.Created = time.Time{} }, "no created time"},
		{"relative path", func(s *Spec) { s.Files[1].Path = "usr/bin/x" }, "must be absolute"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := testSpec(t)
			tt.change(&s)
			if _, err := Build(s); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build: %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestRootKey(t *testing.T) {
	r := DefaultRoot()
	if r.Key() != DefaultRoot().Key() {
		t.Error("the same root has two keys")
	}
	more := DefaultRoot()
	more.Packages = append(more.Packages, "libnss-files")
	if more.Key() == r.Key() {
		t.Error("another package list has the same key")
	}
	args := r.Args("/tmp/root.tar")
	for _, want := range []string{"--variant=essential", "--format=tar", "--include=ca-certificates", "--dpkgopt=path-exclude=/usr/share/doc/*", "bookworm", "/tmp/root.tar"} {
		if !slices.Contains(args, want) {
			t.Errorf("mmdebstrap %q lacks %q", args, want)
		}
	}
	if p := r.CachedPath("/c"); !strings.HasPrefix(p, "/c/debian-bookworm-essential-") || !strings.HasSuffix(p, r.Key()+".tar") {
		t.Errorf("CachedPath = %s", p)
	}
}

// TestNormalizeRoot: MakeRoot's treatment of mmdebstrap's tarball clamps
// every time to the epoch and drops sub-second times, so that two roots of
// one epoch are the same bytes.
func TestNormalizeRoot(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1900000000, 123456789), Format: tar.FormatPAX},
		{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 500000000), Format: tar.FormatPAX},
		{Name: "./etc/group", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1900000001, 1), AccessTime: time.Unix(1900000002, 0), Format: tar.FormatPAX},
		{Name: "./dev/null", Typeflag: tar.TypeChar, Mode: 0o666, ModTime: time.Unix(1900000000, 0)},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	raw, out := filepath.Join(dir, "raw.tar"), filepath.Join(dir, "root.tar")
	if err := os.WriteFile(raw, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(1800000000, 0)
	if err := normalizeRoot(raw, out, epoch); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	want := map[string]time.Time{"etc/": time.Unix(1700000000, 0), "etc/group": epoch}
	got := map[string]time.Time{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.ModTime
		if !h.AccessTime.IsZero() || h.PAXRecords["mtime"] != "" || h.PAXRecords["atime"] != "" {
			t.Errorf("%s keeps other times: atime %v, PAX %v", h.Name, h.AccessTime, h.PAXRecords)
		}
	}
	if len(got) != len(want) {
		t.Errorf("normalized root holds %v, want %v", got, want)
	}
	for n, w := range want {
		if !got[n].Equal(w) {
			t.Errorf("%s: time %v, want %v", n, got[n], w)
		}
	}
}
