// Package ociimage builds caretaker's container image without a registry:
// a Debian root made by mmdebstrap (root.go) as one layer, the binaries as a
// second, and the image's configuration, written as an archive that
// `podman load` and `docker load` take (docker-archive: manifest.json,
// the config and gzipped layers in one tar).
package ociimage

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Where things are in the image.
const (
	ConfigDir  = "/etc/caretaker"
	DataDir    = "/var/lib/caretaker"
	ServerPort = "9300/tcp"
	AgentPort  = "9301/tcp"
	// Path is the PATH of the image's processes.
	Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// File is a file of the binaries' layer.
type File struct {
	// Source is the file on this machine.
	Source string
	// Path is where it lives in the image, absolute.
	Path string
	// Mode is its permission bits.
	Mode int64
}

// Binaries are caretaker's three programs in binDir (`make build`'s bin/)
// and where they live in the image.
func Binaries(binDir string) []File {
	var fs []File
	for _, n := range []string{"caretaker", "caretaker-agent", "runbook"} {
		fs = append(fs, File{Source: path.Join(binDir, n), Path: "/usr/bin/" + n, Mode: 0o755})
	}
	return fs
}

// Spec is what the image is made of and what its configuration says.
type Spec struct {
	// BaseTar is the root's tarball (MakeRoot's); its device nodes and
	// /dev entries are left out (the runtime makes /dev), paths lose a
	// leading "./".
	BaseTar string
	// Files are the binaries' layer.
	Files []File
	// Created is the image's and every added file's time:
	// SOURCE_DATE_EPOCH or the commit's time, so that two builds of one
	// commit on one cached root are the same bytes.
	Created time.Time
	// Version, Revision (the commit) and Source (the repository's URL)
	// and Licenses (an SPDX expression) are the OCI labels of the same
	// names.
	Version, Revision, Source, Licenses string
	// Architecture is GOARCH of the binaries, e.g. amd64.
	Architecture string
}

// Labels are the image's org.opencontainers.image.* labels.
// An empty one (no git remote to name the source) is left out.
func (s Spec) Labels() map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "caretaker",
		"org.opencontainers.image.description": "caretaker: monitoring and self-healing for KVM hosts and their guests. Runs the server by default, as user 65532; the command `agent` (caretaker agent) or the entrypoint /usr/bin/caretaker-agent runs the agent, which needs root (--user 0), the host's network and its libvirt socket. /usr/bin/runbook is the on-call CLI.",
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.revision":    s.Revision,
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.licenses":    s.Licenses,
		"org.opencontainers.image.created":     s.Created.UTC().Format(time.RFC3339),
	}
	for k, v := range l {
		if v == "" {
			delete(l, k)
		}
	}
	return l
}

// Build makes the image: the root as the first layer, the binaries with
// the configuration and data directories as the second.
func Build(s Spec) (v1.Image, error) {
	if s.Created.IsZero() {
		return nil, errors.New("build image: no created time (SOURCE_DATE_EPOCH or the commit's time)")
	}
	if s.Architecture == "" {
		return nil, errors.New("build image: no architecture")
	}
	for _, f := range s.Files {
		if _, err := os.Stat(f.Source); err != nil {
			return nil, fmt.Errorf("build image: %w (make build first)", err)
		}
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("build image: %s: path in the image must be absolute", f.Path)
		}
	}
	created := s.Created.UTC().Truncate(time.Second)
	// gzip's default level: 8 MiB smaller than go-containerregistry's
	// BestSpeed for some seconds more.
	opts := []tarball.LayerOption{tarball.WithCompressedCaching, tarball.WithCompressionLevel(gzip.DefaultCompression)}
	base, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return baseLayer(s.BaseTar) }, opts...)
	if err != nil {
		return nil, fmt.Errorf("build image: base layer %s: %w", s.BaseTar, err)
	}
	files := append([]File(nil), s.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	bins, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return binariesLayer(files, created) }, opts...)
	if err != nil {
		return nil, fmt.Errorf("build image: binaries layer: %w", err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Path)
	}
	img, err := mutate.Append(empty.Image,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "mmdebstrap: Debian root (internal/ociimage.Root)", Comment: path.Base(s.BaseTar)}},
		mutate.Addendum{Layer: bins, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "caretaker binaries: " + strings.Join(names, " ")}},
	)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = s.Architecture, "linux"
	cf.Created = v1.Time{Time: created}
	cf.Author = ""
	cf.Config = v1.Config{
		Entrypoint:   []string{"/usr/bin/caretaker"},
		Cmd:          []string{"server", "--config.file", ConfigDir + "/server.yml", "--web.listen-address", ":9300"},
		User:         fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
		ExposedPorts: map[string]struct{}{ServerPort: {}, AgentPort: {}},
		Env:          []string{"PATH=" + Path},
		WorkingDir:   DataDir,
		Volumes:      map[string]struct{}{DataDir: {}},
		Labels:       s.Labels(),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return img, nil
}

// Write writes img as a docker-archive tarball to file, tagged tag (e.g.
// caretaker:1.2.3): `docker load -i` and `podman load -i` both read it.
// It is written beside file and renamed into place.
func Write(img v1.Image, tag, file string) error {
	t, err := name.NewTag(tag, name.WithDefaultRegistry("localhost"))
	if err != nil {
		return fmt.Errorf("write image %s: %w", file, err)
	}
	tmp := file + ".tmp"
	defer os.Remove(tmp)
	if err := tarball.WriteToFile(tmp, t, img); err != nil {
		return fmt.Errorf("write image %s: %w", file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("write image %s: %w", file, err)
	}
	return nil
}

// baseLayer streams the root's tarball as a layer: paths without "./",
// no device nodes, FIFOs or anything under /dev (a rootless runtime cannot
// make them and every runtime mounts its own /dev), no access or change
// times.
func baseLayer(file string) (io.ReadCloser, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		err := filterRoot(tar.NewReader(f), tar.NewWriter(pw), time.Time{})
		f.Close()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// filterRoot copies a root's tarball as baseLayer says; with a clamp,
// no time is later than it, and times are whole seconds.
func filterRoot(tr *tar.Reader, tw *tar.Writer, clamp time.Time) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("read root tarball: %w", err)
		}
		p := strings.TrimPrefix(h.Name, "./")
		if p == "" || p == "." {
			continue
		}
		switch h.Typeflag {
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			continue
		}
		if strings.HasPrefix(p, "dev/") && p != "dev/" {
			continue
		}
		h.Name = p
		if h.Typeflag == tar.TypeLink {
			h.Linkname = strings.TrimPrefix(h.Linkname, "./")
		}
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		h.ModTime = h.ModTime.Truncate(time.Second)
		if !clamp.IsZero() && h.ModTime.After(clamp) {
			h.ModTime = clamp
		}
		for _, k := range []string{"mtime", "atime", "ctime"} {
			delete(h.PAXRecords, k)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write base layer: %s: %w", p, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("write base layer: %s: %w", p, err)
		}
	}
}

// binariesLayer streams the second layer: the configuration directory
// (root's, 0755), the data directory (the non-root user's, 0750) and the
// files, owned by root, all with the time created.
func binariesLayer(files []File, created time.Time) (io.ReadCloser, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeBinaries(tar.NewWriter(pw), files, created))
	}()
	return pr, nil
}

func writeBinaries(tw *tar.Writer, files []File, created time.Time) error {
	dirs := []*tar.Header{
		{Name: strings.TrimPrefix(ConfigDir, "/") + "/", Mode: 0o755},
		{Name: strings.TrimPrefix(DataDir, "/") + "/", Mode: 0o750, Uid: NonRootUID, Gid: NonRootUID},
	}
	for _, h := range dirs {
		h.Typeflag, h.ModTime, h.Format = tar.TypeDir, created, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write binaries layer: %w", err)
		}
	}
	for _, f := range files {
		if err := writeFile(tw, f, created); err != nil {
			return fmt.Errorf("write binaries layer: %w", err)
		}
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, f File, created time.Time) error {
	src, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", f.Source)
	}
	h := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     strings.TrimPrefix(f.Path, "/"),
		Mode:     f.Mode,
		Size:     st.Size(),
		ModTime:  created,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if n, err := io.Copy(tw, src); err != nil {
		return fmt.Errorf("%s: %w", f.Source, err)
	} else if n != st.Size() {
		return fmt.Errorf("%s: changed while read (%d bytes, not %d)", f.Source, n, st.Size())
	}
	return nil
}
