package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"caretaker/remediation"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeGood(t *testing.T) {
	for _, tc := range []struct {
		file      string
		receiver  string
		truncated uint64
		want      []remediation.Alert // only the fields compared below
	}{
		{"firing.json", "caretaker", 0, []remediation.Alert{
			{Name: "GuestCrashed", Status: "firing", Fingerprint: "5f2b1b9a0c3d4e6f", StartsAt: time.Date(2026, 11, 25, 14, 0, 0, 123e6, time.UTC)},
			{Name: "GuestCrashed", Status: "firing", Fingerprint: "0123456789abcdef", StartsAt: time.Date(2026, 11, 25, 13, 0, 30, 0, time.UTC)},
		}},
		{"resolved.json", "caretaker", 0, []remediation.Alert{
			{Name: "GuestCrashed", Status: "resolved", Fingerprint: "5f2b1b9a0c3d4e6f", StartsAt: time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC),
				EndsAt: time.Date(2026, 11, 25, 14, 5, 0, 0, time.UTC)},
		}},
		// Newer fields and unknown ones are accepted; the missing
		// fingerprint is computed from the labels.
		{"newer-alertmanager.json", "caretaker", 3, []remediation.Alert{
			{Name: "OverlayDown", Status: "firing", Fingerprint: fingerprint(map[string]string{"alertname": "OverlayDown", "cluster": "a"}),
				StartsAt: time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)},
		}},
		{"no-alerts.json", "caretaker", 0, nil},
	} {
		t.Run(tc.file, func(t *testing.T) {
			m, err := Decode(bytes.NewReader(readTestdata(t, filepath.Join("good", tc.file))), 0)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if m.Version != Version || m.Receiver != tc.receiver || m.TruncatedAlerts != tc.truncated {
				t.Errorf("version %q receiver %q truncated %d; want %q %q %d", m.Version, m.Receiver, m.TruncatedAlerts, Version, tc.receiver, tc.truncated)
			}
			got := m.RemediationAlerts()
			if len(got) != len(tc.want) {
				t.Fatalf("%d alerts, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Name != w.Name || g.Status != w.Status || g.Fingerprint != w.Fingerprint ||
					!g.StartsAt.Equal(w.StartsAt) || !g.EndsAt.Equal(w.EndsAt) || g.Labels["alertname"] != w.Name {
					t.Errorf("alert %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestDecodeBad(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"empty.json", "empty body"},
		{"truncated.json", "malformed JSON: unexpected end of JSON input"},
		{"trailing.json", "malformed JSON: invalid character '{' after top-level value"},
		{"array.json", "malformed JSON: the body: want an object, got array"},
		{"alerts-string.json", "malformed JSON: alerts: want an array, got string"},
		{"negative-truncated.json", "malformed JSON: truncatedAlerts: want a non-negative integer, got number -1"},
		{"no-version.json", `version: missing, want "4"`},
		{"version-3.json", `version: got "3", want "4"`},
		{"bad-status.json", `status: "pending" is not "firing" or "resolved"`},
		{"alert-number.json", "alerts[1]: want an object, got number"},
		{"alert-bad-status.json", `alerts[1].status: "active" is not "firing" or "resolved"`},
		{"label-number.json", "alerts[0].labels: want a string, got number"},
		{"no-alertname.json", "alerts[0].labels.alertname: missing"},
		{"empty-alertname.json", "alerts[0].labels.alertname: missing"},
		{"zero-startsat.json", "alerts[2].startsAt: missing"},
		{"explicit-zero-startsat.json", "alerts[0].startsAt: missing"},
		{"bad-time.json", `alerts[0].startsAt: want an RFC 3339 time: parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"`},
		{"endsat-number.json", "alerts[0].endsAt: want an RFC 3339 time: Time.UnmarshalJSON: input is not a JSON string"},
		{"bad-fingerprint.json", `alerts[0].fingerprint: "../../etc" is not 16 hexadecimal digits`},
	} {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Decode(bytes.NewReader(readTestdata(t, filepath.Join("bad", tc.file))), 0)
			if err == nil {
				t.Fatal("Decode accepted it")
			}
			if want := "invalid alertmanager webhook: " + tc.want; err.Error() != want {
				t.Errorf("error\n got %s\nwant %s", err, want)
			}
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrTooLarge) {
				t.Errorf("error %v: want ErrInvalid only", err)
			}
		})
	}
}

// Every bad file is tested: a new one without an expected error fails.
func TestDecodeBadFilesAllListed(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.json")
	if err != nil || len(files) != 19 {
		t.Fatalf("%d bad files (%v); TestDecodeBad lists 19: keep them in step", len(files), err)
	}
}

func TestDecodeLimit(t *testing.T) {
	body := readTestdata(t, "good/firing.json")
	n := int64(len(body))
	if _, err := Decode(bytes.NewReader(body), n); err != nil {
		t.Errorf("body of exactly the limit: %v", err)
	}
	_, err := Decode(bytes.NewReader(body), n-1)
	if !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrInvalid) {
		t.Fatalf("body one byte over the limit: %v, want ErrTooLarge", err)
	}
	if want := "alertmanager webhook: request body too large: over " + strconv.FormatInt(n-1, 10) + " bytes"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// No limit is the default limit, never none.
	big := strings.Repeat(" ", DefaultBodyLimit) + string(body)
	if _, err := Decode(strings.NewReader(big), 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("body over DefaultBodyLimit with limit 0: %v, want ErrTooLarge", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, dir := range []string{"good", "bad"} {
		files, err := filepath.Glob(filepath.Join("testdata", dir, "*.json"))
		if err != nil {
			f.Fatal(err)
		}
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Decode(bytes.NewReader(body), 1<<16)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps neither ErrInvalid nor ErrTooLarge: %v", err)
			}
			return
		}
		// What is accepted is what the inbox and engine rely on.
		for i, a := range m.RemediationAlerts() {
			if a.Name == "" || a.StartsAt.IsZero() || !isFingerprint(a.Fingerprint) ||
				(a.Status != remediation.StatusFiring && a.Status != remediation.StatusResolved) {
				t.Fatalf("accepted alert %d is invalid: %+v", i, a)
			}
		}
		// And it survives a round trip unchanged.
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(bytes.NewReader(again), 0)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		if twice, _ := json.Marshal(m2); !bytes.Equal(twice, again) {
			t.Fatalf("round trip changed the message:\n%s\n%s", again, twice)
		}
	})
}
