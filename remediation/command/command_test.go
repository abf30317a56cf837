package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/needs"
	"caretaker/internal/yamlfile"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string // "" for valid
	}{
		{"absolute program", Spec{Program: "/bin/echo", Args: []string{"{{ .Labels.host }}", "literal"}}, ""},
		{"bare name", Spec{Program: "systemctl", Args: []string{"restart", "{{ .Annotations.unit }}"}}, ""},
		{"alert name, comment and printf", Spec{Program: "x", Args: []string{"{{/* c */}}{{ printf \"%s-%s\" .Alert .Labels.host }}"}}, ""},
		{"variables", Spec{Program: "x", Args: []string{"{{ $h := .Labels.host }}{{ $h }}{{ $.Alert }}"}}, ""},
		{"zero limits", Spec{Program: "x", Timeout: 0, OutputLimit: 0}, ""},
		{"env and dir", Spec{Program: "x", Env: []string{"A=1", "B="}, Dir: "/tmp"}, ""},
		{"no program", Spec{}, "program: is required"},
		{"relative program", Spec{Program: "bin/fix"}, `program: "bin/fix" is a relative path; give an absolute path or a bare name looked up in PATH`},
		{"dot program", Spec{Program: "./fix"}, `program: "./fix" is a relative path; give an absolute path or a bare name looked up in PATH`},
		{"unclosed action", Spec{Program: "x", Args: []string{"ok", "ok", "{{ .Labels.host "}}, `args[2]: template: arg:1: unclosed action`},
		{"unknown function", Spec{Program: "x", Args: []string{"{{ shell .Alert }}"}}, `args[0]: template: arg:1: function "shell" not defined`},
		{"typo in field", Spec{Program: "x", Args: []string{"host={{ .Lables.host }}"}}, `args[0]: template: arg:1:15: unknown field .Lables: use .Alert, .Labels.<name> or .Annotations.<name>`},
		{"label shorthand", Spec{Program: "x", Args: []string{"{{ .host }}"}}, `args[0]: template: arg:1:3: unknown field .host: use .Alert, .Labels.<name> or .Annotations.<name>`},
		{"field of alert", Spec{Program: "x", Args: []string{"{{ .Alert.name }}"}}, `args[0]: template: arg:1:9: .Alert is a string and has no fields`},
		{"field in nested pipeline", Spec{Program: "x", Args: []string{"{{ printf \"%s\" (print .Host) }}"}}, `args[0]: template: arg:1:22: unknown field .Host: use .Alert, .Labels.<name> or .Annotations.<name>`},
		{"field through $", Spec{Program: "x", Args: []string{"{{ $.Host }}"}}, `args[0]: template: arg:1:4: unknown field .Host: use .Alert, .Labels.<name> or .Annotations.<name>`},
		{"range", Spec{Program: "x", Args: []string{"{{ range 1000000000 }}x{{ end }}"}}, `args[0]: template: arg:1:9: {{range}} is not allowed in an argument, only text and {{ value }}`},
		{"if", Spec{Program: "x", Args: []string{"a{{ if .Alert }}x{{ end }}"}}, `args[0]: template: arg:1:7: {{if}} is not allowed in an argument, only text and {{ value }}`},
		{"define", Spec{Program: "x", Args: []string{`{{ define "y" }}y{{ end }}`}}, `args[0]: template: arg: {{define}} is not allowed in an argument`},
		{"negative timeout", Spec{Program: "x", Timeout: -time.Second}, "timeout: -1s is negative"},
		{"negative limit", Spec{Program: "x", OutputLimit: -1}, "output_limit_bytes: -1 is negative"},
		{"env without =", Spec{Program: "x", Env: []string{"A=1", "PATH"}}, `env[1]: "PATH" is not of the form NAME=value`},
		{"env without name", Spec{Program: "x", Env: []string{"=1"}}, `env[0]: "=1" is not of the form NAME=value`},
		{"relative dir", Spec{Program: "x", Dir: "tmp"}, `dir: "tmp" is not an absolute path`},
		{"all at once", Spec{Args: []string{"{{"}, Timeout: -1, OutputLimit: -2}, "program: is required\n" +
			"args[0]: template: arg:1: unclosed action\n" +
			"timeout: -1ns is negative\n" +
			"output_limit_bytes: -2 is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q\nwant         %q", got, tt.want)
			}
			var fe *yamlfile.FieldError
			if err != nil && !errors.As(err, &fe) {
				t.Errorf("Validate() error %T is not a yamlfile.FieldError", err)
			}
		})
	}
}

// The policy file embeds a Spec; its fields decode from YAML, and its
// errors come back located by file and line.
func TestDecodeYAML(t *testing.T) {
	good := []byte(`program: /usr/sbin/ip
args: [link, set, "{{ .Labels.device }}", up]
timeout: 5s
output_limit_bytes: 4096
env: [LC_ALL=C]
dir: /
`)
	var s Spec
	if err := yamlfile.Decode("good.yml", good, &s); err != nil {
		t.Fatal(err)
	}
	want := Spec{Program: "/usr/sbin/ip", Args: []string{"link", "set", "{{ .Labels.device }}", "up"},
		Timeout: 5 * time.Second, OutputLimit: 4096, Env: []string{"LC_ALL=C"}, Dir: "/"}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("decoded %+v, want %+v", s, want)
	}

	bad := []byte(`program: /bin/echo
args:
  - ok
  - "{{ .Labels.host"
timeout: -2s
`)
	err := yamlfile.Decode("bad.yml", bad, &Spec{})
	wantErr := "bad.yml:4: args[1]: template: arg:1: unclosed action\nbad.yml:5: timeout: -2s is negative"
	if err == nil || err.Error() != wantErr {
		t.Errorf("Decode(bad) = %v\nwant %s", err, wantErr)
	}
}

// argvData is Data with the spec's AllowDash, for TestArgv's table.
type argvData struct {
	Data
	allowDash bool
}

func TestArgv(t *testing.T) {
	data := argvData{Data: Data{
		Alert:       "GuestCrashed",
		Labels:      map[string]string{"host": "kvm-03", "uuid": "1b4e28ba", "odd": "a b; $(id) {{ .Alert }}", "dash": "--force"},
		Annotations: map[string]string{"summary": "guest crashed"},
	}}
	tests := []struct {
		name    string
		args    []string
		data    argvData
		want    []string
		wantErr string
	}{
		{"literals", []string{"restart", "", "{x}"}, data, []string{"prog", "restart", "", "{x}"}, ""},
		{"fields", []string{"--host={{ .Labels.host }}", "{{ .Alert }}", "{{ .Annotations.summary }}"}, data,
			[]string{"prog", "--host=kvm-03", "GuestCrashed", "guest crashed"}, ""},
		{"value is one literal argument", []string{"{{ .Labels.odd }}"}, data, []string{"prog", "a b; $(id) {{ .Alert }}"}, ""},
		{"printf", []string{`{{ printf "%s/%s" .Labels.host .Labels.uuid }}`}, data, []string{"prog", "kvm-03/1b4e28ba"}, ""},
		{"missing label", []string{"ok", "{{ .Labels.domain }}"}, data, nil,
			`args[1]: template: arg:1:10: executing "arg" at <.Labels.domain>: map has no entry for key "domain"`},
		{"missing annotation", []string{"{{ .Annotations.runbook }}"}, data, nil,
			`args[0]: template: arg:1:15: executing "arg" at <.Annotations.runbook>: map has no entry for key "runbook"`},
		{"no labels at all", []string{"{{ .Labels.host }}"}, argvData{}, nil,
			`args[0]: template: arg:1:10: executing "arg" at <.Labels.host>: map has no entry for key "host"`},
		{"argument too long", []string{`{{ printf "%900000s%900000s" "a" "b" }}`}, data, nil,
			"args[0]: longer than 131072 bytes, the most execve accepts in one argument"},
		{"value beginning with a dash", []string{"start", "{{ .Labels.dash }}"}, data, nil,
			`args[1]: value "--force" begins with "-" and would be read as an option; put a literal "--" argument before it or set allow_dash: true on the command`},
		{"dash from a function", []string{`{{ printf "-%s" .Alert }}`}, data, nil,
			`args[0]: value "-GuestCrashed" begins with "-" and would be read as an option; put a literal "--" argument before it or set allow_dash: true on the command`},
		{"dash after the end of options", []string{"start", "--", "{{ .Labels.dash }}"}, data, []string{"prog", "start", "--", "--force"}, ""},
		{"dash written by the operator", []string{"-v", "--host={{ .Labels.dash }}"}, data, []string{"prog", "-v", "--host=--force"}, ""},
		{"dash allowed", []string{"{{ .Labels.dash }}"}, argvData{Data{Labels: map[string]string{"dash": "-x"}}, true}, []string{"prog", "-x"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Spec{Program: "prog", Args: tt.args, AllowDash: tt.data.allowDash}.Argv(tt.data.Data)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Argv() error = %v\nwant %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Argv() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	data := Data{Alert: "HostDown", Labels: map[string]string{"host": "kvm-03"}}
	tests := []struct {
		name      string
		spec      Spec
		wantArgv  []string
		wantOut   string
		wantCode  int
		wantErr   string
		wantErrIs error
	}{
		{
			name:     "echo with labels",
			spec:     Spec{Program: "/bin/echo", Args: []string{"{{ .Alert }}", "on", "{{ .Labels.host }}"}},
			wantArgv: []string{"/bin/echo", "HostDown", "on", "kvm-03"},
			wantOut:  "HostDown on kvm-03\n",
		},
		{
			name:     "bare name looked up in PATH",
			spec:     Spec{Program: "echo", Args: []string{"hi"}},
			wantArgv: []string{"echo", "hi"},
			wantOut:  "hi\n",
		},
		{
			name:     "stdout and stderr interleaved",
			spec:     Spec{Program: "/bin/sh", Args: []string{"-c", "echo out; echo err >&2; echo out2"}},
			wantArgv: []string{"/bin/sh", "-c", "echo out; echo err >&2; echo out2"},
			wantOut:  "out\nerr\nout2\n",
		},
		{
			name:     "non-zero exit keeps the output",
			spec:     Spec{Program: "/bin/sh", Args: []string{"-c", "echo failing >&2; exit 3"}},
			wantArgv: []string{"/bin/sh", "-c", "echo failing >&2; exit 3"},
			wantOut:  "failing\n",
			wantCode: 3,
			wantErr:  "run /bin/sh: exit status 3",
		},
		{
			name:     "false",
			spec:     Spec{Program: "/bin/false"},
			wantArgv: []string{"/bin/false"},
			wantCode: 1,
			wantErr:  "run /bin/false: exit status 1",
		},
		{
			name:      "missing absolute program",
			spec:      Spec{Program: "/nonexistent/fix-it", Args: []string{"{{ .Labels.host }}"}},
			wantArgv:  []string{"/nonexistent/fix-it", "kvm-03"},
			wantCode:  -1,
			wantErr:   "start /nonexistent/fix-it: fork/exec /nonexistent/fix-it: no such file or directory",
			wantErrIs: fs.ErrNotExist,
		},
		{
			name:      "missing bare name",
			spec:      Spec{Program: "caretaker-no-such-program"},
			wantArgv:  []string{"caretaker-no-such-program"},
			wantCode:  -1,
			wantErr:   `start caretaker-no-such-program: exec: "caretaker-no-such-program": executable file not found in $PATH`,
			wantErrIs: exec.ErrNotFound,
		},
		{
			name:     "env is added",
			spec:     Spec{Program: "/bin/sh", Args: []string{"-c", `echo "$CARETAKER_TEST_A $CARETAKER_TEST_B"`}, Env: []string{"CARETAKER_TEST_A=1", "CARETAKER_TEST_B=x=y"}},
			wantArgv: []string{"/bin/sh", "-c", `echo "$CARETAKER_TEST_A $CARETAKER_TEST_B"`},
			wantOut:  "1 x=y\n",
		},
		{
			name:     "dir",
			spec:     Spec{Program: "/bin/pwd", Dir: dir},
			wantArgv: []string{"/bin/pwd"},
			wantOut:  dir + "\n",
		},
		{
			name:     "missing label runs nothing",
			spec:     Spec{Program: "/bin/echo", Args: []string{"{{ .Labels.uuid }}"}},
			wantCode: -1,
			wantErr:  `render arguments of /bin/echo: args[0]: template: arg:1:10: executing "arg" at <.Labels.uuid>: map has no entry for key "uuid"`,
		},
		{
			name:     "invalid spec runs nothing",
			spec:     Spec{Program: "bin/echo"},
			wantCode: -1,
			wantErr:  `invalid command: program: "bin/echo" is a relative path; give an absolute path or a bare name looked up in PATH`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Run(t.Context(), tt.spec, data)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Errorf("Run() error = %q\nwant %q", gotErr, tt.wantErr)
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("Run() error %v is not %v", err, tt.wantErrIs)
			}
			if !slices.Equal(res.Argv, tt.wantArgv) {
				t.Errorf("Argv = %q, want %q", res.Argv, tt.wantArgv)
			}
			if string(res.Output) != tt.wantOut || res.Truncated {
				t.Errorf("Output = %q (truncated %v), want %q", res.Output, res.Truncated, tt.wantOut)
			}
			if res.ExitCode != tt.wantCode {
				t.Errorf("ExitCode = %d, want %d", res.ExitCode, tt.wantCode)
			}
		})
	}
}

// A label value is one literal argument: never split, never interpreted.
func TestRunLabelInjection(t *testing.T) {
	dir := t.TempDir()
	canary := filepath.Join(dir, "canary")
	values := []string{
		"; touch " + canary,
		"$(touch " + canary + ")",
		"`touch " + canary + "`",
		"x && touch " + canary + " || touch " + canary,
		"a b\tc\nd",
		"* ? [a-z] ~ $HOME",
		`'single' "double" \back`,
		"--help",
		"{{ .Alert }}",
	}
	for _, v := range values {
		t.Run(strconv.Quote(v), func(t *testing.T) {
			// AllowDash lets "--help" through: the refusal of a leading
			// dash has its own cases in TestArgv.
			s := Spec{Program: "/usr/bin/printf", Args: []string{`[%s]\n`, "{{ .Labels.host }}", "{{ .Labels.host }}-x"}, Dir: dir, AllowDash: true}
			res, err := Run(t.Context(), s, Data{Alert: "A", Labels: map[string]string{"host": v}})
			if err != nil {
				t.Fatalf("Run: %v (output %q)", err, res.Output)
			}
			wantArgv := []string{"/usr/bin/printf", `[%s]\n`, v, v + "-x"}
			if !slices.Equal(res.Argv, wantArgv) {
				t.Errorf("Argv = %q, want %q", res.Argv, wantArgv)
			}
			if want := "[" + v + "]\n[" + v + "-x]\n"; string(res.Output) != want {
				t.Errorf("Output = %q, want %q", res.Output, want)
			}
			if _, err := os.Stat(canary); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the label value was executed: %s exists (stat: %v)", canary, err)
			}
		})
	}
}

func TestRunOutputLimit(t *testing.T) {
	tests := []struct {
		name      string
		write     int // bytes the program writes
		limit     int // Spec.OutputLimit
		wantLen   int
		wantTrunc bool
	}{
		{"1 MiB against the default", 1 << 20, 0, DefaultOutputLimit, true},
		{"1 MiB against 1000", 1 << 20, 1000, 1000, true},
		{"exactly the limit", 4096, 4096, 4096, false},
		{"under the limit", 10, 4096, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The program writes everything and then exits 0: had Run
			// stopped reading at the limit, it would block on the pipe
			// until the timeout.
			s := Spec{Program: "/usr/bin/head", Args: []string{"-c", strconv.Itoa(tt.write), "/dev/zero"}, OutputLimit: tt.limit}
			res, err := Run(t.Context(), s, Data{})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Output) != tt.wantLen || res.Truncated != tt.wantTrunc || res.ExitCode != 0 {
				t.Errorf("got %d bytes, truncated %v, exit %d; want %d, %v, 0", len(res.Output), res.Truncated, res.ExitCode, tt.wantLen, tt.wantTrunc)
			}
			if !bytes.Equal(res.Output, make([]byte, tt.wantLen)) {
				t.Error("output is not the zeros written")
			}
		})
	}
}

// A timeout or a cancelled context kills the program and everything it
// started: the shell's background child must be gone when Run returns.
func TestRunKillsProcessGroup(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		cancel  bool // cancel the caller's context once the child runs
		wantErr string
		wantIs  error
	}{
		{"timeout", time.Second, false, "run /bin/sh: timed out after 1s", context.DeadlineExceeded},
		{"caller cancels", time.Minute, true, "run /bin/sh: context canceled", context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "child.pid")
			// "started" is out before the pid file appears, which the
			// cancel waits for: otherwise the kill can come first.
			s := Spec{
				Program: "/bin/sh",
				Args:    []string{"-c", `echo started; sleep 100 & echo $! > "$1.tmp" && mv "$1.tmp" "$1"; wait`, "sh", pidFile},
				Timeout: tt.timeout,
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				go func() {
					waitFor(t, "the child's pid file", func() bool { _, err := os.Stat(pidFile); return err == nil })
					cancel()
				}()
			}
			res, err := Run(ctx, s, Data{})
			if err == nil || err.Error() != tt.wantErr || !errors.Is(err, tt.wantIs) {
				t.Fatalf("Run() error = %v, want %q (is %v)", err, tt.wantErr, tt.wantIs)
			}
			if res.ExitCode != -1 || string(res.Output) != "started\n" {
				t.Errorf("ExitCode %d, Output %q; want -1, %q", res.ExitCode, res.Output, "started\n")
			}
			raw, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatalf("the child never wrote its pid before the kill: %v", err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, fmt.Sprintf("child %d to die", pid), func() bool { return !alive(pid) })
		})
	}
}

// A process that leaves its group (setsid) and keeps the output pipe open
// cannot hang Run, and Run says what happened.
func TestRunOutputHeldAfterExit(t *testing.T) {
	needs.Program(t, "setsid")
	pidFile := filepath.Join(t.TempDir(), "daemon.pid")
	s := Spec{
		Program: "/bin/sh",
		Args:    []string{"-c", `setsid sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 100' sh "$1" & echo bye`, "sh", pidFile},
	}
	// Run waits 2s (waitDelay) for the pipe; the same path with a
	// shorter wait, since waiting is all there is to it.
	res, err := run(t.Context(), s, Data{}, 200*time.Millisecond)
	t.Cleanup(func() {
		if raw, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	if !errors.Is(err, exec.ErrWaitDelay) || !strings.HasPrefix(err.Error(), "run /bin/sh: exited with status 0, but a process it started still held its output 200ms later") {
		t.Fatalf("Run() error = %v, want exec.ErrWaitDelay explained", err)
	}
	if res.ExitCode != 0 || string(res.Output) != "bye\n" {
		t.Errorf("ExitCode %d, Output %q; want 0, %q", res.ExitCode, res.Output, "bye\n")
	}
}

// alive reports whether pid exists and is not a zombie waiting to be reaped
// by whichever process inherited it.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	_, rest, _ := bytes.Cut(stat, []byte(") "))
	return !bytes.HasPrefix(rest, []byte("Z"))
}

// waitFor polls cond for up to 10 seconds; the bound is for a broken
// system, not a guess at how long the work takes.
func waitFor(t *testing.T, what string, cond func() bool) {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("gave up waiting for %s", what)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func FuzzRender(f *testing.F) {
	f.Add("{{ .Labels.host }}", "{{ .Alert }}-{{ .Annotations.summary }}", "kvm-03")
	f.Add(`{{ printf "%s/%s" .Labels.host .Alert }}`, "plain", "; rm -rf /")
	f.Add(`{{ range 10 }}x{{ end }}`, `{{ define "a" }}{{ template "a" }}{{ end }}`, "{{ .Alert }}")
	f.Add(`{{ slice .Alert 3 1 }}`, `{{ index .Labels "host" 1 }}`, "")
	f.Add(`{{ $x := .Labels }}{{ $x.host }}`, "{{ .Labels.nope }}", "a\x00b")
	f.Add(`{{ len .Labels | printf "%d" }}`, `{{ call .Alert }}`, "é")
	f.Fuzz(func(t *testing.T, a, b, value string) {
		s := Spec{Program: "prog", Args: []string{a, b, "{{ .Labels.host }}"}}
		d := Data{Alert: value, Labels: map[string]string{"host": value}, Annotations: map[string]string{"summary": value}}
		argv, err := s.Argv(d)
		if strings.HasPrefix(value, "-") && !slices.Contains(s.Args[:2], "--") {
			if err == nil {
				t.Fatalf("Argv() = %q passed a label beginning with a dash", argv)
			}
			return
		}
		if err != nil {
			if len(value) <= maxArgBytes && !strings.Contains(err.Error(), "args[0]") && !strings.Contains(err.Error(), "args[1]") {
				t.Fatalf("only the fuzzed templates may fail, got %v", err)
			}
			return
		}
		if len(argv) != 1+len(s.Args) || argv[0] != "prog" {
			t.Fatalf("Argv() = %q, want program and %d arguments", argv, len(s.Args))
		}
		if argv[3] != value {
			t.Errorf("label rendered as %q, want it verbatim: %q", argv[3], value)
		}
		for i, tmpl := range []string{a, b} {
			if !strings.Contains(tmpl, "{{") && argv[1+i] != tmpl {
				t.Errorf("literal argument %q rendered as %q", tmpl, argv[1+i])
			}
		}
		if err := s.Validate(); err != nil {
			t.Errorf("Argv accepted what Validate refuses: %v", err)
		}
	})
}

func BenchmarkArgv(b *testing.B) {
	s := Spec{Program: "/usr/bin/virsh", Args: []string{"start", "{{ .Labels.uuid }}", "--host={{ .Labels.host }}"}}
	d := Data{Alert: "GuestCrashed", Labels: map[string]string{"host": "kvm-03", "uuid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}}
	for b.Loop() {
		if _, err := s.Argv(d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRunTrue(b *testing.B) {
	s := Spec{Program: "/bin/true"}
	for b.Loop() {
		if _, err := Run(b.Context(), s, Data{}); err != nil {
			b.Fatal(err)
		}
	}
}
