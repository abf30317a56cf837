// Package command runs the remediation engine's run-command action: one
// program with an argument list, alert labels filled into the arguments by
// templates, a timeout, and its output captured and capped.
//
// There is no shell, on purpose. Label values are data written by whoever
// controls a scrape target or sends an alert; through `sh -c` a value such as
// `; rm -rf /` would become code run as root. Each argument is rendered on
// its own and handed to execve as exactly one argv element, so nothing is
// split, quoted, globbed or expanded. An operator who needs pipes or
// redirections writes a script and names it as the program.
package command

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"caretaker/internal/yamlfile"
)

// Defaults for the zero values of Spec.Timeout and Spec.OutputLimit.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultOutputLimit = 64 << 10
)

// waitDelay bounds how long Run waits for the output pipe to close once the
// program has exited or been killed: a process it left behind (one that
// escaped the process group with setsid) may hold the pipe for ever.
const waitDelay = 2 * time.Second

// Spec is one command, as written in the policy file under an action's
// parameters.
//
// Program is an absolute path, or a bare name ("systemctl") looked up in
// PATH when the command runs; a relative path ("bin/fix") is refused, since
// what it names would depend on the working directory. Each element of Args
// is a text/template rendered against Data (see Data) into exactly one
// argument. Env entries ("NAME=value", not templated) are added to the
// caretaker process's environment; Dir, when set, is the absolute working
// directory. A zero Timeout or OutputLimit means DefaultTimeout or
// DefaultOutputLimit.
//
// A templated argument whose value begins with "-" is refused: a label such
// as "--force" would otherwise reach the program as an option. It passes
// when an earlier argument is the literal "--" (the end of the options for
// most programs) or when AllowDash is set. A dash written in the template
// itself ("--host={{ .Labels.host }}") is the operator's and always passes.
type Spec struct {
	Program     string        `yaml:"program"`
	Args        []string      `yaml:"args"`
	Timeout     time.Duration `yaml:"timeout"`
	OutputLimit int           `yaml:"output_limit_bytes"`
	Env         []string      `yaml:"env"`
	Dir         string        `yaml:"dir"`
	AllowDash   bool          `yaml:"allow_dash"`
}

// Data is what argument templates see: {{ .Alert }} is the alert's name,
// {{ .Labels.host }} one of its labels and {{ .Annotations.summary }} one of
// its annotations. A label or annotation the alert lacks is an error, never
// an empty string.
type Data struct {
	Alert       string
	Labels      map[string]string
	Annotations map[string]string
}

// Result is what a run did. Argv[0] is Program as written; ExitCode is -1
// when the program did not exit by itself (not started, killed).
type Result struct {
	Argv      []string
	ExitCode  int
	Output    []byte // stdout and stderr interleaved, at most the output limit
	Truncated bool   // the program wrote more than Output holds
	Duration  time.Duration
}

// Validate checks s without running anything: the program's form (not
// whether it exists, which is a property of the host it runs on), every
// argument template, and the limits. Errors are yamlfile.FieldErrors named
// by field ("args[2]: template: …"), joined.
func (s Spec) Validate() error {
	var errs []error
	switch {
	case s.Program == "":
		errs = append(errs, yamlfile.Errorf("program", "is required"))
	case strings.Contains(s.Program, "/") && !filepath.IsAbs(s.Program):
		errs = append(errs, yamlfile.Errorf("program", "%q is a relative path; give an absolute path or a bare name looked up in PATH", s.Program))
	}
	for i, a := range s.Args {
		if _, err := parseArg(a); err != nil {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("args[%d]", i), "%v", err))
		}
	}
	if s.Timeout < 0 {
		errs = append(errs, yamlfile.Errorf("timeout", "%s is negative", s.Timeout))
	}
	if s.OutputLimit < 0 {
		errs = append(errs, yamlfile.Errorf("output_limit_bytes", "%d is negative", s.OutputLimit))
	}
	for i, e := range s.Env {
		if name, _, ok := strings.Cut(e, "="); !ok || name == "" {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("env[%d]", i), "%q is not of the form NAME=value", e))
		}
	}
	if s.Dir != "" && !filepath.IsAbs(s.Dir) {
		errs = append(errs, yamlfile.Errorf("dir", "%q is not an absolute path", s.Dir))
	}
	return errors.Join(errs...)
}

// Argv renders the arguments for d and returns the command line Run would
// execute, program first: what the journal records as the intent before
// anything runs.
func (s Spec) Argv(d Data) ([]string, error) {
	argv := make([]string, 0, 1+len(s.Args))
	argv = append(argv, s.Program)
	optionsEnded := s.AllowDash
	for i, a := range s.Args {
		v, err := renderArg(a, d)
		if err != nil {
			return nil, fmt.Errorf("args[%d]: %w", i, err)
		}
		if !optionsEnded && strings.HasPrefix(v, "-") && !strings.HasPrefix(a, "-") {
			return nil, fmt.Errorf("args[%d]: value %q begins with \"-\" and would be read as an option; put a literal \"--\" argument before it or set allow_dash: true on the command", i, truncate(v))
		}
		if a == "--" {
			optionsEnded = true
		}
		argv = append(argv, v)
	}
	return argv, nil
}

// Run validates s, renders its arguments for d and runs the program, with
// stdin empty, until it exits or its timeout (or ctx) ends; then it kills the
// program's whole process group, so whatever the program started dies too.
// A non-zero exit, a timeout, a program that cannot start, and a process
// left holding the output after the program exited are errors; Result holds
// what is known in every case.
func Run(ctx context.Context, s Spec, d Data) (Result, error) {
	return run(ctx, s, d, waitDelay)
}

// run is Run with the wait for the output pipe as an argument, so a test
// of a process left holding it need not wait the whole waitDelay.
func run(ctx context.Context, s Spec, d Data, waitDelay time.Duration) (Result, error) {
	res := Result{ExitCode: -1}
	if err := s.Validate(); err != nil {
		return res, fmt.Errorf("invalid command: %w", err)
	}
	argv, err := s.Argv(d)
	if err != nil {
		return res, fmt.Errorf("render arguments of %s: %w", s.Program, err)
	}
	res.Argv = argv
	timeout := cmp.Or(s.Timeout, DefaultTimeout)

	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, argv[0], argv[1:]...)
	cmd.Dir = s.Dir
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...) // later entries win
	}
	// Its own process group, so one kill reaches the program's children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var killed atomic.Bool
	cmd.Cancel = func() error {
		killed.Store(true)
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	out := &cappedBuffer{limit: cmp.Or(s.OutputLimit, DefaultOutputLimit)}
	// One writer for both: exec then uses one pipe, which keeps the
	// interleaving the program produced.
	cmd.Stdout, cmd.Stderr = out, out

	start := time.Now()
	err = cmd.Run()
	res.Duration = time.Since(start)
	res.Output, res.Truncated = out.buf, out.truncated
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	switch {
	case err == nil:
		return res, nil
	case cmd.ProcessState == nil:
		return res, fmt.Errorf("start %s: %w", argv[0], err)
	case errors.Is(err, exec.ErrWaitDelay):
		return res, fmt.Errorf("run %s: exited with status 0, but a process it started still held its output %s later (redirect that process's output): %w", argv[0], waitDelay, err)
	case killed.Load() && ctx.Err() == nil:
		return res, fmt.Errorf("run %s: %w", argv[0], timeoutError(timeout))
	case killed.Load():
		return res, fmt.Errorf("run %s: %w", argv[0], ctx.Err())
	default:
		return res, fmt.Errorf("run %s: %w", argv[0], err)
	}
}

// truncate keeps an error about a value readable when the value is long.
func truncate(v string) string {
	const keep = 64
	if len(v) <= keep {
		return v
	}
	return v[:keep] + "…"
}

// timeoutError reads "timed out after 2s" and is a context.DeadlineExceeded.
type timeoutError time.Duration

func (e timeoutError) Error() string { return "timed out after " + time.Duration(e).String() }
func (e timeoutError) Unwrap() error { return context.DeadlineExceeded }

// cappedBuffer keeps the first limit bytes written to it and drops the rest
// while still accepting them, so the program never blocks on a full pipe.
// exec calls Write from one goroutine only, since stdout and stderr share it.
type cappedBuffer struct {
	buf       []byte
	limit     int
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	keep := min(len(p), b.limit-len(b.buf))
	b.buf = append(b.buf, p[:keep]...)
	if keep < len(p) {
		b.truncated = true
	}
	return len(p), nil
}
