package needs

import (
	"testing"
)

// recorder is a testing.TB that records whether the test was skipped or
// failed instead of stopping the goroutine.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Helper() {}
func (r *recorder) Skip(args ...any) {
	r.skipped = true
	r.msg = args[0].(string)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = format
}

func TestMissing(t *testing.T) {
	for _, tt := range []struct {
		env               string
		wantSkip, wantErr bool
	}{
		{"", true, false},
		{"0", true, false},
		{"1", false, true},
	} {
		t.Run("env="+tt.env, func(t *testing.T) {
			t.Setenv(RequireEnv, tt.env)
			r := &recorder{TB: t}
			Missing(r, "needs %s", "x")
			if r.skipped != tt.wantSkip || r.failed != tt.wantErr {
				t.Errorf("skipped %v, failed %v; want %v, %v", r.skipped, r.failed, tt.wantSkip, tt.wantErr)
			}
		})
	}
}

func TestProgramFound(t *testing.T) {
	r := &recorder{TB: t}
	if p := Program(r, "sh"); p == "" || r.skipped || r.failed {
		t.Errorf("Program(sh) = %q, skipped %v, failed %v", p, r.skipped, r.failed)
	}
	Program(r, "no-such-program-caretaker")
	if !r.skipped && !r.failed {
		t.Error("a missing program was neither skipped nor failed")
	}
}
