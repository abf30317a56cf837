package agentapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadEvents feeds ReadEvents, the reader of what an agent sends, any
// bytes: it must not panic, must hand on only valid lines (a hello first
// and only first), and what it hands on must read back the same once
// encoded again.
func FuzzReadEvents(f *testing.F) {
	f.Add([]byte(`{"hello":{"boot":"0123456789abcdef","seq":3,"resumed":true,"libvirt":true}}
{"event":{"seq":4,"time":"2025-01-02T03:04:05.123456789Z","type":"stopped","detail":"destroyed","uuid":"0d000000-0000-4000-8000-000000000001","domain":"guest0","state_known":true,"state":5,"reason":2,"intended_running":true}}
{"event":{"seq":5,"time":"2025-01-02T03:04:06+02:00","type":"gap","state_known":false,"state":0,"reason":0,"since":"2025-01-02T03:04:05Z"}}
{"heartbeat":{"seq":5,"libvirt":false}}
`))
	f.Add([]byte(`{"heartbeat":{"seq":1,"libvirt":true}}` + "\n"))
	f.Add([]byte(`{"hello":{"boot":"b","seq":0,"resumed":false,"libvirt":false},"heartbeat":{"seq":0}}` + "\n"))
	f.Add([]byte(`{"hello":{"boot":"b"}}` + "\r\n" + `{"hello":{"boot":"b"}}` + "\n"))
	f.Add([]byte(`{"hello":{"boot":"b"}}` + "\n" + `{"event":{"seq":1,"type":"started","uuid":"not-a-uuid"}}`))
	f.Add([]byte(`{"hello":{"boot":"b"}}` + "\n\n" + `null`))
	f.Add([]byte(`{"hello":{"boot":"` + strings.Repeat("x", MaxEventLine) + `"}}`))
	f.Fuzz(func(t *testing.T, stream []byte) {
		var lines []StreamLine
		err := ReadEvents(bytes.NewReader(stream), func(l StreamLine) error {
			if err := l.Validate(); err != nil {
				t.Fatalf("handed an invalid line: %v", err)
			}
			if (len(lines) == 0) != (l.Hello != nil) {
				t.Fatalf("line %d: hello %v: want a hello first and only first", len(lines)+1, l.Hello != nil)
			}
			lines = append(lines, l)
			return nil
		})
		if err == nil {
			t.Fatal("ReadEvents returned nil: want io.EOF at a clean end or an error")
		}
		if n := bytes.Count(stream, []byte("\n")) + 1; len(lines) > n {
			t.Fatalf("%d lines handed on from %d lines of input", len(lines), n)
		}
		if len(lines) == 0 {
			return
		}
		// Encoded again, the lines read back the same.
		var again bytes.Buffer
		var want [][]byte
		for _, l := range lines {
			b, err := json.Marshal(l)
			if err != nil {
				t.Fatalf("encode %+v: %v", l, err)
			}
			want = append(want, b)
			again.Write(b)
			again.WriteByte('\n')
		}
		i := 0
		err = ReadEvents(&again, func(l StreamLine) error {
			b, err := json.Marshal(l)
			if err != nil {
				t.Fatalf("encode %+v: %v", l, err)
			}
			if !bytes.Equal(b, want[i]) {
				t.Errorf("line %d read back as %s, want %s", i+1, b, want[i])
			}
			i++
			return nil
		})
		if !errors.Is(err, io.EOF) || i != len(lines) {
			t.Fatalf("re-encoded stream: %d of %d lines, then %v", i, len(lines), err)
		}
	})
}
