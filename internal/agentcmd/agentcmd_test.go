package agentcmd

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func TestNewNamesTheInvocation(t *testing.T) {
	for invocation, use := range map[string]string{"caretaker agent": "agent", "caretaker-agent": "caretaker-agent"} {
		cmd := New(invocation, func(io.Writer) *slog.Logger { return slog.New(slog.DiscardHandler) })
		if cmd.Use != use {
			t.Errorf("New(%q).Use = %q, want %q", invocation, cmd.Use, use)
		}
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs([]string{"--help"})
		if err := cmd.Execute(); err != nil {
			t.Fatal(err)
		}
		if want := "  " + invocation + " --config.file /etc/caretaker/agent.yml"; !strings.Contains(out.String(), want) {
			t.Errorf("%s --help lacks the example %q:\n%s", invocation, want, out.String())
		}
	}
}
