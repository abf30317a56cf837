package main

import (
	"io"
	"testing"

	"caretaker/internal/logflags"
)

// The game day's flags are refused without --chaos, before anything starts.
func TestLabGameDayFlagsNeedChaos(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "json"}, "--output is the game day's: use it with --chaos"},
		{[]string{"--chaos.hold", "5s"}, "--chaos.hold is the game day's: use it with --chaos"},
	} {
		cmd := newLabCmd(logflags.New())
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SetArgs(tc.args)
		if err := cmd.Execute(); err == nil || err.Error() != tc.want {
			t.Errorf("lab %v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
