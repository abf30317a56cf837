package guestmeta

import (
	"strings"
	"testing"
)

var parseMetadataTests = []struct {
	name    string
	in      string
	want    Metadata
	wantErr string // substring; empty means success
}{
	{
		name: "as returned by virDomainGetMetadata",
		in:   "<guest>\n  <intent>running</intent>\n  <cluster>lab</cluster>\n  <role>worker</role>\n</guest>",
		want: Metadata{Intent: "running", Cluster: "lab", Role: "worker"},
	},
	{
		name: "prefixed, children unqualified",
		in:   `<caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1"><intent>stopped</intent><cluster>lab</cluster><role>worker</role></caretaker:guest>`,
		want: Metadata{Intent: "stopped", Cluster: "lab", Role: "worker"},
	},
	{
		name: "prefixed children, as libvirt rewrites an element it namespaced",
		in:   `<caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1"><caretaker:intent>running</caretaker:intent><caretaker:role>worker</caretaker:role></caretaker:guest>`,
		want: Metadata{Intent: "running", Role: "worker"},
	},
	{
		name: "default namespace, as Metadata.XML writes it",
		in:   `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>running</intent><cluster>c&amp;d</cluster></guest>`,
		want: Metadata{Intent: "running", Cluster: "c&d"},
	},
	{
		name: "space around values and document is ignored",
		in:   "  <?xml version=\"1.0\"?>\n<guest>\n<intent>\n running \n</intent><role> worker</role></guest>\n<!-- done -->\n",
		want: Metadata{Intent: "running", Role: "worker"},
	},
	{
		name: "unknown children are ignored",
		in:   `<guest><intent>running</intent><since>2026</since><notes><a>b</a></notes></guest>`,
		want: Metadata{Intent: "running"},
	},
	{
		name: "unknown intent is passed on",
		in:   `<guest><intent>sometimes</intent></guest>`,
		want: Metadata{Intent: "sometimes"},
	},
	{
		name: "empty element",
		in:   `<guest/>`,
		want: Metadata{},
	},
	{name: "empty input", in: "", wantErr: "EOF"},
	{name: "not XML", in: "intent=running", wantErr: "parse guest metadata"},
	{name: "unclosed", in: "<guest><intent>running</intent>", wantErr: "unexpected EOF"},
	{name: "wrong root", in: "<host><intent>running</intent></host>", wantErr: "root element is <host>"},
	{
		name:    "foreign namespace",
		in:      `<guest xmlns="https://example.com/other"><intent>running</intent></guest>`,
		wantErr: `namespace "https://example.com/other"`,
	},
	{name: "second root", in: "<guest/><guest/>", wantErr: "second root element"},
	{name: "trailing text", in: "<guest/>running", wantErr: "after the root element"},
	{
		name:    "too large",
		in:      "<guest><role>" + strings.Repeat("x", maxBytes) + "</role></guest>",
		wantErr: "more than the",
	},
}

func TestParseMetadata(t *testing.T) {
	t.Parallel()
	for _, tt := range parseMetadataTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseMetadata: got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMetadata: %v", err)
			}
			if got != tt.want {
				t.Errorf("ParseMetadata: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMetadataXML(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      Metadata
		want    string
		wantErr string
	}{
		{
			name: "all fields",
			in:   Metadata{Intent: IntentRunning, Cluster: "lab", Role: "worker"},
			want: `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>running</intent><cluster>lab</cluster><role>worker</role></guest>`,
		},
		{
			name: "empty fields left out",
			in:   Metadata{Intent: IntentStopped},
			want: `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>stopped</intent></guest>`,
		},
		{
			name: "no intent",
			in:   Metadata{Cluster: "lab"},
			want: `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><cluster>lab</cluster></guest>`,
		},
		{
			name: "escaped",
			in:   Metadata{Cluster: `a&b<c>"d"`},
			want: `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><cluster>a&amp;b&lt;c&gt;&#34;d&#34;</cluster></guest>`,
		},
		{name: "unknown intent", in: Metadata{Intent: "sometimes"}, wantErr: `intent "sometimes"`},
		{name: "surrounding space", in: Metadata{Role: " worker"}, wantErr: "leading or trailing space"},
		{name: "control character", in: Metadata{Role: "a\x00b"}, wantErr: "U+0000"},
		{name: "invalid UTF-8", in: Metadata{Cluster: "\xff"}, wantErr: "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.XML()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("XML: got %q, %v, want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("XML: %v", err)
			}
			if got != tt.want {
				t.Errorf("XML:\n got %s\nwant %s", got, tt.want)
			}
			back, err := Parse(got)
			if err != nil || back != tt.in {
				t.Errorf("Parse(XML()) = %+v, %v, want %+v", back, err, tt.in)
			}
		})
	}
}

func TestMetadataFromDomain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		inner   string
		want    Metadata
		ok      bool
		wantErr string
	}{
		{name: "empty"},
		{
			name:  "another application's only",
			inner: `<app:thing xmlns:app="https://example.com/app"><cluster>other</cluster></app:thing>`,
		},
		{
			name: "as libvirt formats it, among others",
			inner: `
    <app:thing xmlns:app="https://example.com/app"><guest>not ours</guest></app:thing>
    <caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1">
      <caretaker:intent>running</caretaker:intent>
      <caretaker:cluster> prod </caretaker:cluster>
      <caretaker:role>worker</caretaker:role>
    </caretaker:guest>
  `,
			want: Metadata{Intent: IntentRunning, Cluster: "prod", Role: "worker"},
			ok:   true,
		},
		{
			name:  "as Metadata.XML writes it",
			inner: `<guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>stopped</intent><cluster>lab</cluster></guest>`,
			want:  Metadata{Intent: IntentStopped, Cluster: "lab"},
			ok:    true,
		},
		{
			name:  "a guest element without our namespace is not ours",
			inner: `<guest><cluster>lab</cluster></guest>`,
		},
		{
			name:    "broken",
			inner:   `<caretaker:guest xmlns:caretaker="https://caretaker.dev/xmlns/guest/1"><intent>running</caretaker:guest>`,
			wantErr: "parse guest metadata",
		},
		{
			name:    "too large",
			inner:   strings.Repeat(" ", maxBytes+1),
			wantErr: "more than the",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := FromDomain(tt.inner)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("metadataFromDomain: got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.ok || got != tt.want {
				t.Errorf("metadataFromDomain = %+v, %v, %v; want %+v, %v, nil", got, ok, err, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseMetadata(f *testing.F) {
	for _, tt := range parseMetadataTests {
		if len(tt.in) < 1024 {
			f.Add(tt.in)
		}
	}
	f.Fuzz(func(t *testing.T, in string) {
		m, err := Parse(in)
		if err != nil {
			return
		}
		for _, v := range []string{m.Intent, m.Cluster, m.Role} {
			if strings.TrimSpace(v) != v {
				t.Fatalf("Parse(%q) left space around %q", in, v)
			}
		}
		// Whatever XML can write must read back unchanged.
		out, err := m.XML()
		if err != nil {
			return
		}
		back, err := Parse(out)
		if err != nil || back != m {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", out, back, err, m)
		}
	})
}
