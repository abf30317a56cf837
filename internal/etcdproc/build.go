package etcdproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	// BuildVersion is the etcd that Build builds.
	BuildVersion = "v3.7.3"
	// buildModule holds etcd's main package.
	buildModule = "go.etcd.io/etcd/server/v3"
	// buildLimit bounds a build: about a minute on 2 cores with a warm
	// module cache, several with a cold one.
	buildLimit = 20 * time.Minute
	// buildOutputKeep bounds the go command's output kept for an error.
	buildOutputKeep = 16 << 10
)

// Build returns an etcd BuildVersion built from the Go module proxy at
// <cacheDir>/bin/etcd, building it only when no such binary is there. It is
// the lab's fallback where Debian's etcd-server is not installed; tests use
// Find. It needs the go command and the module proxy, and takes a minute
// or more.
//
// `go install go.etcd.io/etcd/server/v3@v3.7.3` refuses: the server's
// go.mod replaces its sibling modules (api, client, pkg) with local paths.
// So the build runs in a throwaway module that requires the server, where
// those replacements do not apply and the siblings come from the proxy at
// the versions the server requires.
func Build(ctx context.Context, cacheDir string) (string, error) {
	if cacheDir == "" {
		return "", errors.New("build etcd: no cache directory")
	}
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return "", fmt.Errorf("build etcd: %w", err)
	}
	bin := filepath.Join(cacheDir, "bin", "etcd")
	if builtVersion(ctx, bin) {
		return bin, nil
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		// Where Go is installed by hand, as on these machines, a minimal
		// PATH may lack it.
		if goCmd, err = exec.LookPath("/usr/local/go/bin/go"); err != nil {
			return "", fmt.Errorf("build etcd: the go command is needed (or install Debian's %s): %w", DebianPackage, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("build etcd: %w", err)
	}
	// A directory of its own per build: two labs building at once must not
	// share a go.mod.
	mod, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return "", fmt.Errorf("build etcd: %w", err)
	}
	defer os.RemoveAll(mod)
	gomod := "module caretaker.local/etcdbuild\n\ngo 1.26\n"
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", fmt.Errorf("build etcd: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, buildLimit)
	defer cancel()
	// Written in the build directory, on the cache's file system, then
	// renamed: a concurrent reader sees no binary or a whole one.
	tmp := filepath.Join(mod, "etcd")
	steps := [][]string{
		{"get", buildModule + "@" + BuildVersion},
		{"build", "-trimpath", "-o", tmp, buildModule},
	}
	for _, args := range steps {
		if err := goRun(ctx, goCmd, mod, args); err != nil {
			return "", fmt.Errorf("build etcd %s: %w", BuildVersion, err)
		}
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("build etcd: %w", err)
	}
	if !builtVersion(ctx, bin) {
		return "", fmt.Errorf("build etcd: %s does not report version %s", bin, BuildVersion)
	}
	return bin, nil
}

// goRun runs the go command in dir; the error carries the end of its
// output. The caller's GOFLAGS (-mod=vendor) or go.work must not reach the
// throwaway module.
func goRun(ctx context.Context, goCmd, dir string, args []string) error {
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out := &tail{max: buildOutputKeep}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, lastLines(out.String(), errorLines))
	}
	return nil
}

// builtVersion says whether bin is an etcd of BuildVersion.
func builtVersion(ctx context.Context, bin string) bool {
	if _, err := os.Stat(bin); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	return err == nil && strings.Contains(string(out), "etcd Version: "+strings.TrimPrefix(BuildVersion, "v")+"\n")
}
