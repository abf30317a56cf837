// Command mkimage writes caretaker's container image (`make image`):
// it makes or reuses the cached Debian root, then writes bin/caretaker's,
// bin/caretaker-agent's and bin/runbook's image as a docker-archive tarball
// that `podman load -i` and `docker load -i` read. It is a build tool, not
// part of the shipped binaries.
//
//	go run ./internal/ociimage/mkimage --bin bin --out bin/caretaker-image.tar
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"caretaker/internal/ociimage"
)

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(logger, os.Args[1:]); err != nil {
		logger.Error("mkimage", "err", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory of caretaker, caretaker-agent and runbook (make build)")
	out := fs.String("out", "bin/caretaker-image.tar", "the image archive to write")
	cache := fs.String("cache", "bin/image-root", "directory of the cached Debian roots")
	tag := fs.String("tag", "", "the image's name and tag (default caretaker:VERSION)")
	version := fs.String("version", "", "org.opencontainers.image.version (default: git describe --tags --always --dirty)")
	revision := fs.String("revision", "", "org.opencontainers.image.revision (default: git rev-parse HEAD)")
	source := fs.String("source", "", "org.opencontainers.image.source (default: git remote get-url origin)")
	licenses := fs.String("licenses", "LicenseRef-Proprietary", "org.opencontainers.image.licenses, an SPDX expression (as the Debian packages: proprietary)")
	created := fs.Int64("created", 0, "the image's time, Unix seconds (default: $SOURCE_DATE_EPOCH, else the commit's time)")
	mirror := fs.String("mirror", "", "Debian mirror for mmdebstrap (default: this machine's apt sources)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *version == "" {
		*version = git(ctx, "describe", "--tags", "--always", "--dirty")
	}
	if *revision == "" {
		*revision = git(ctx, "rev-parse", "HEAD")
	}
	if *source == "" {
		*source = git(ctx, "remote", "get-url", "origin")
	}
	if *version == "" {
		*version = "dev"
	}
	if *tag == "" {
		*tag = "caretaker:" + strings.ReplaceAll(*version, "+", "-")
	}
	when, err := createdTime(ctx, *created)
	if err != nil {
		return err
	}

	root := ociimage.DefaultRoot()
	root.Mirror = *mirror
	start := time.Now()
	base, made, err := ociimage.MakeRoot(ctx, logger, root, *cache)
	if err != nil {
		return err
	}
	rootTook := time.Since(start)
	start = time.Now()
	img, err := ociimage.Build(ociimage.Spec{
		BaseTar:      base,
		Files:        ociimage.Binaries(*bin),
		Created:      when,
		Version:      *version,
		Revision:     *revision,
		Source:       *source,
		Licenses:     *licenses,
		Architecture: runtime.GOARCH,
	})
	if err != nil {
		return err
	}
	if err := ociimage.Write(img, *tag, *out); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var sizes []string
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return err
		}
		sizes = append(sizes, fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)))
	}
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	logger.Info("image written", "file", *out, "tag", *tag, "size_mib", fmt.Sprintf("%.1f", float64(st.Size())/(1<<20)),
		"layers_gzip", strings.Join(sizes, " + "), "digest", digest.String(), "created", when.UTC().Format(time.RFC3339),
		"root_made", made, "root_took", rootTook.Round(time.Second), "image_took", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// createdTime is flag's, else SOURCE_DATE_EPOCH, else the commit's time.
func createdTime(ctx context.Context, flagged int64) (time.Time, error) {
	if flagged > 0 {
		return time.Unix(flagged, 0), nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
		}
		return time.Unix(n, 0), nil
	}
	s := git(ctx, "log", "-1", "--format=%ct")
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, errors.New("no created time: set SOURCE_DATE_EPOCH or --created outside a git checkout")
	}
	return time.Unix(n, 0), nil
}

// git runs git with args and returns its trimmed output, or "" on error.
func git(ctx context.Context, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
