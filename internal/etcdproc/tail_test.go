package etcdproc

import (
	"strings"
	"testing"
)

func TestTailKeepsTheEnd(t *testing.T) {
	tl := &tail{max: 10}
	for _, s := range []string{"abc", "defgh", "ijklmnop"} {
		if n, err := tl.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := tl.String(); got != "ghijklmnop" {
		t.Errorf("tail = %q", got)
	}
}

func TestLastLines(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := lastLines(tt.in, tt.n); got != tt.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestEnvironWithoutEtcd(t *testing.T) {
	t.Setenv("ETCD_NAME", "shadowed")
	for _, kv := range environ() {
		if strings.HasPrefix(kv, "ETCD_") {
			t.Errorf("environ() has %s", kv)
		}
	}
}

func TestArgsLoopbackMember(t *testing.T) {
	a := strings.Join(args("/d", "m", "http://127.0.0.1:1", "http://127.0.0.1:2", []string{"--x"}), " ")
	for _, want := range []string{"--initial-cluster m=http://127.0.0.1:2", "--max-txn-ops 1024", "--max-request-bytes 10485760", "--data-dir /d", " --x"} {
		if !strings.Contains(a, want) {
			t.Errorf("args %q lack %q", a, want)
		}
	}
}

func TestTaken(t *testing.T) {
	log := `{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:4001: bind: address already in use"}`
	if !taken(log, "127.0.0.1:4001") {
		t.Error("the port in the log is not taken")
	}
	if taken(log, "127.0.0.1:400") || taken(log, "127.0.0.1:4002") {
		t.Error("another port is taken")
	}
}
