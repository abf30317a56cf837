package ociimage

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Root says how the image's base, a Debian root, is made with mmdebstrap.
// Everything that changes the root is in it, and its Key is the name of the
// cached tarball: a changed package list makes a new root, an unchanged one
// is made once.
type Root struct {
	// Suite is the Debian release, e.g. bookworm.
	Suite string
	// Variant is mmdebstrap's: essential (the Essential: yes packages and
	// what Packages depend on, no apt) is the smallest that still runs
	// maintainer scripts.
	Variant string
	// Packages are installed with their dependencies: the runtime
	// libraries the binaries link and the CA certificates.
	Packages []string
	// Mirror is the Debian mirror; empty takes the machine's apt sources
	// (or deb.debian.org).
	Mirror string
}

// DefaultRoot is the root of caretaker's image: Debian 12 with
// ca-certificates. The binaries are static (pure Go, built with
// CGO_ENABLED=0): they link no library of the root's.
func DefaultRoot() Root {
	return Root{
		Suite:    "bookworm",
		Variant:  "essential",
		Packages: []string{"ca-certificates"},
	}
}

// NonRootUID is the user the image runs as unless told otherwise (the
// agent needs root). The root's /etc/passwd and /etc/group name it
// "caretaker".
const NonRootUID = 65532

// mergedUsrHooks is the hook directory of Debian's mmdebstrap that sets up
// the merged /usr with usr-is-merged; without it bookworm's
// init-system-helpers pulls in usrmerge and with it perl (45 MiB).
const mergedUsrHooks = "/usr/share/mmdebstrap/hooks/merged-usr"

// Args are mmdebstrap's arguments that write the root as a tarball to out.
// Documentation, manual pages, locales and apt's caches and lists are left
// out (copyright files are kept); the non-root user is added.
func (r Root) Args(out string) []string {
	pkgs := append([]string(nil), r.Packages...)
	args := []string{
		"--variant=" + r.Variant,
		"--format=tar",
		"--include=" + strings.Join(pkgs, ","),
		"--hook-dir=" + mergedUsrHooks,
	}
	for _, o := range []string{
		"path-exclude=/usr/share/doc/*",
		"path-include=/usr/share/doc/*/copyright",
		"path-exclude=/usr/share/man/*",
		"path-exclude=/usr/share/info/*",
		"path-exclude=/usr/share/locale/*",
		"path-exclude=/usr/share/lintian/*",
	} {
		args = append(args, "--dpkgopt="+o)
	}
	// mmdebstrap runs its hooks with sh; "$1" is the root.
	args = append(args,
		fmt.Sprintf(`--customize-hook=echo 'caretaker:x:%d:%d:caretaker:/var/lib/caretaker:/usr/sbin/nologin' >> "$1/etc/passwd"`, NonRootUID, NonRootUID),
		fmt.Sprintf(`--customize-hook=echo 'caretaker:x:%d:' >> "$1/etc/group"`, NonRootUID),
		// The essential packages are unpacked before the path-excludes
		// apply: what they left is removed here.
		`--customize-hook=find "$1/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete`,
		`--customize-hook=find "$1/usr/share/doc" -mindepth 2 -type d -empty -delete`,
		`--customize-hook=rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/* "$1"/usr/share/lintian/*`,
		`--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/var/cache/ldconfig/aux-cache`,
		r.Suite, out,
	)
	if r.Mirror != "" {
		args = append(args, r.Mirror)
	}
	return args
}

// Key names the root: a hash of mmdebstrap's arguments.
func (r Root) Key() string {
	h := sha256.New()
	// How MakeRoot treats mmdebstrap's tarball: a change there makes new
	// roots.
	h.Write([]byte("normalized-1\x00"))
	for _, a := range r.Args("OUT") {
		h.Write([]byte(a))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// CachedPath is where the root made in cacheDir is kept.
func (r Root) CachedPath(cacheDir string) string {
	return filepath.Join(cacheDir, fmt.Sprintf("debian-%s-%s-%s.tar", r.Suite, r.Variant, r.Key()))
}

// MakeRootTimeout bounds one mmdebstrap run (about 45 s here, cold).
const MakeRootTimeout = 15 * time.Minute

// MakeRoot returns the root's tarball in cacheDir, making it with
// mmdebstrap (as root) when it is not there yet; made says whether it was.
// Making one removes the roots of other keys from cacheDir.
// A failed or interrupted run leaves nothing behind under the final name.
// SOURCE_DATE_EPOCH, when set, is passed on (mmdebstrap clamps the root's
// times to it); otherwise the time of making is, so the tarball's times are
// one.
func MakeRoot(ctx context.Context, logger *slog.Logger, r Root, cacheDir string) (path string, made bool, err error) {
	path = r.CachedPath(cacheDir)
	if _, err := os.Stat(path); err == nil {
		logger.Info("base root cached", "path", path)
		return path, false, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, fmt.Errorf("make base root: %w", err)
	}
	mm, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return "", false, fmt.Errorf("make base root: mmdebstrap is not installed (apt-get install mmdebstrap): %w", err)
	}
	// Another build making the same root at once writes its own.
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(ctx, MakeRootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, mm, r.Args(tmp)...)
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		epoch = strconv.FormatInt(time.Now().Unix(), 10)
	}
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+epoch)
	out := &cappedBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	logger.Info("making base root with mmdebstrap (about a minute)", "suite", r.Suite, "variant", r.Variant, "packages", r.Packages)
	if err := cmd.Run(); err != nil {
		return "", false, fmt.Errorf("make base root: mmdebstrap %s: %w\n%s", strings.Join(r.Args(tmp), " "), err, out.String())
	}
	// mmdebstrap's tarball keeps the times of making (to the nanosecond)
	// on what its hooks and maintainer scripts touched: they are clamped
	// to the epoch, so two roots of one epoch and one mirror are the same
	// bytes.
	n, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return "", false, fmt.Errorf("make base root: SOURCE_DATE_EPOCH=%q: %w", epoch, err)
	}
	norm := tmp + ".norm"
	defer os.Remove(norm)
	if err := normalizeRoot(tmp, norm, time.Unix(n, 0)); err != nil {
		return "", false, fmt.Errorf("make base root: %w", err)
	}
	if err := os.Rename(norm, path); err != nil {
		return "", false, fmt.Errorf("make base root: %w", err)
	}
	logger.Info("base root made", "path", path, "took", time.Since(start).Round(time.Second))
	// Roots of other package lists are of no more use.
	if old, err := filepath.Glob(filepath.Join(cacheDir, "debian-*.tar")); err == nil {
		for _, o := range old {
			if o != path {
				logger.Info("removing an older base root", "path", o)
				os.Remove(o)
			}
		}
	}
	return path, true, nil
}

// cappedBuffer keeps the last max bytes written to it.
type cappedBuffer struct {
	max int
	buf []byte
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = b.buf[len(b.buf)-b.max:]
	}
	return len(p), nil
}

func (b *cappedBuffer) String() string { return string(b.buf) }

var _ io.Writer = (*cappedBuffer)(nil)

// normalizeRoot writes the tarball from as filterRoot does, every time
// clamped to epoch, to the file to.
func normalizeRoot(from, to string, epoch time.Time) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if err := filterRoot(tar.NewReader(in), tar.NewWriter(out), epoch); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
