package labbmc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"caretaker/provisioner/pxe"
)

// served is a fake PXE server: path → status and body; it counts requests.
type served struct {
	mu     sync.Mutex
	routes map[string]route
	got    []string // path?query of every request
}

type route struct {
	status int
	body   string
}

func (s *served) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.got = append(s.got, r.URL.RequestURI())
	rt, ok := s.routes[r.URL.Path]
	s.mu.Unlock()
	if !ok {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	w.WriteHeader(rt.status)
	_, _ = w.Write([]byte(rt.body))
}

const chainScript = "#!ipxe\nchain ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}\n"

func TestFirmware(t *testing.T) {
	t.Parallel()
	const mac = "52:54:00:1a:b0:01"
	for _, tc := range []struct {
		name    string
		routes  map[string]route
		uuid    string
		want    []string // the requests, in order
		booted  string   // path of the image booted
		fetched []string // command status path of each fetch
		err     string
	}{
		{
			name: "kernel profile",
			uuid: "4c4c4544-0079-3510-8052-b2c04f4a4e79",
			routes: map[string]route{
				"/pxe/boot.ipxe": {200, chainScript},
				"/pxe/ipxe": {200, "#!ipxe\nkernel /assets/vmlinuz console=ttyS0\ninitrd initrd.img\n" +
					"imgfetch /pxe/booted?mac=52:54:00:1a:b0:01&token=s3cret-token\nboot\necho never\nimgfetch /never\n"},
				"/assets/vmlinuz": {200, "\x7fELF kernel"},
				"/pxe/initrd.img": {200, "initrd"},
				"/pxe/booted":     {204, ""},
			},
			want: []string{"/pxe/boot.ipxe", "/pxe/ipxe?mac=52-54-00-1a-b0-01&uuid=4c4c4544-0079-3510-8052-b2c04f4a4e79",
				"/assets/vmlinuz", "/pxe/initrd.img", "/pxe/booted?mac=52:54:00:1a:b0:01&token=s3cret-token"},
			booted:  "/assets/vmlinuz",
			fetched: []string{"chain 200 /pxe/boot.ipxe", "chain 200 /pxe/ipxe", "kernel 200 /assets/vmlinuz", "initrd 200 /pxe/initrd.img", "imgfetch 204 /pxe/booted"},
		},
		{
			name:    "chain of an image boots it",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, chainScript}, "/pxe/ipxe": {200, "MZ not a script"}},
			want:    []string{"/pxe/boot.ipxe", "/pxe/ipxe?mac=52-54-00-1a-b0-01&uuid="},
			booted:  "/pxe/ipxe",
			fetched: []string{"chain 200 /pxe/boot.ipxe", "chain 200 /pxe/ipxe"},
		},
		{
			name:    "script ends without boot",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, chainScript}, "/pxe/ipxe": {200, "#!ipxe\necho hi\n"}},
			want:    []string{"/pxe/boot.ipxe", "/pxe/ipxe?mac=52-54-00-1a-b0-01&uuid="},
			fetched: []string{"chain 200 /pxe/boot.ipxe", "chain 200 /pxe/ipxe"},
		},
		{
			name:    "no attempt in flight",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, chainScript}, "/pxe/ipxe": {404, "no provisioning in flight for mac 52:54:00:1a:b0:01\n"}},
			want:    []string{"/pxe/boot.ipxe", "/pxe/ipxe?mac=52-54-00-1a-b0-01&uuid="},
			fetched: []string{"chain 200 /pxe/boot.ipxe", "chain 404 /pxe/ipxe"},
			err:     `HTTP 404: "no provisioning in flight for mac 52:54:00:1a:b0:01"`,
		},
		{
			name:    "refused callback stops the script",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nimgfetch /pxe/booted?token=s3cret-token\nimgfetch /after\n"}, "/pxe/booted": {403, "invalid booted token"}},
			want:    []string{"/pxe/boot.ipxe", "/pxe/booted?token=s3cret-token"},
			fetched: []string{"chain 200 /pxe/boot.ipxe", "imgfetch 403 /pxe/booted"},
			err:     "imgfetch BASE/pxe/booted?token=REDACTED: HTTP 403",
		},
		{
			name:    "chain loop",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nchain boot.ipxe\n"}},
			want:    []string{"/pxe/boot.ipxe", "/pxe/boot.ipxe", "/pxe/boot.ipxe", "/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe", "chain 200 /pxe/boot.ipxe", "chain 200 /pxe/boot.ipxe", "chain 200 /pxe/boot.ipxe"},
			err:     "more than 4 scripts deep",
		},
		{
			name:    "boot without a kernel",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nboot\n"}},
			want:    []string{"/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe"},
			err:     "line 2: boot with no kernel loaded",
		},
		{
			name:    "not http",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nimgfetch tftp://10.0.0.1/undionly.kpxe\n"}},
			want:    []string{"/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe"},
			err:     `line 2: imgfetch: URL "tftp://10.0.0.1/undionly.kpxe": only http(s) URLs are fetched`,
		},
		{
			name:    "unknown setting",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nchain /pxe/ipxe?name=${hostname}\n"}},
			want:    []string{"/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe"},
			err:     `unknown setting "${hostname}"`,
		},
		{
			name:    "script too big",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\n" + strings.Repeat("#", maxScript)}},
			want:    []string{"/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe"},
			err:     "script larger than 65536 bytes",
		},
		{
			name:    "unsupported command",
			routes:  map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\ndhcp\nchain /pxe/ipxe\n"}},
			want:    []string{"/pxe/boot.ipxe"},
			fetched: []string{"chain 200 /pxe/boot.ipxe"},
			err:     `line 2: command "dhcp" is not supported`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &served{routes: tc.routes}
			srv := httptest.NewServer(s)
			defer srv.Close()
			rep, err := Firmware{BaseURL: srv.URL, MAC: mac, UUID: tc.uuid, Client: srv.Client()}.Boot(context.Background())
			if tc.err != "" {
				want := strings.ReplaceAll(tc.err, "BASE", srv.URL)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Boot: %v; want an error containing %q", err, want)
				}
			} else if err != nil {
				t.Errorf("Boot: %v", err)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret-token") {
				t.Errorf("error shows the token: %v", err)
			}
			s.mu.Lock()
			got := slices.Clone(s.got)
			s.mu.Unlock()
			if !slices.Equal(got, tc.want) {
				t.Errorf("requests %q, want %q", got, tc.want)
			}
			var fetched []string
			for _, f := range rep.Fetched {
				p, _, _ := strings.Cut(strings.TrimPrefix(f.URL, srv.URL), "?")
				fetched = append(fetched, strings.Join([]string{f.Command, strconv.Itoa(f.Status), p}, " "))
			}
			if !slices.Equal(fetched, tc.fetched) {
				t.Errorf("fetched %q, want %q", fetched, tc.fetched)
			}
			if booted := strings.TrimPrefix(rep.Booted, srv.URL); booted != tc.booted && !strings.HasPrefix(booted, tc.booted+"?") {
				t.Errorf("booted %q, want %q", rep.Booted, tc.booted)
			}
			if s := rep.String(); strings.Contains(s, "s3cret-token") {
				t.Errorf("report shows the token:\n%s", s)
			}
		})
	}
}

// TestFirmwareRefuses: what the firmware cannot boot with, and a server
// that is gone, fail without showing a token.
func TestFirmwareRefuses(t *testing.T) {
	t.Parallel()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	s := &served{routes: map[string]route{"/pxe/boot.ipxe": {200, "#!ipxe\nimgfetch " + gone.URL + "/pxe/booted?token=s3cret-token\n"}}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	ok := Firmware{BaseURL: srv.URL, MAC: "52:54:00:1a:b0:01", Client: srv.Client()}
	for _, tc := range []struct {
		name string
		edit func(*Firmware)
		want string
	}{
		{"base URL not http", func(f *Firmware) { f.BaseURL = "tftp://10.0.0.1" }, `base URL "tftp://10.0.0.1": want http(s)`},
		{"base URL without host", func(f *Firmware) { f.BaseURL = "http:///x" }, "want http(s)"},
		{"bad MAC", func(f *Firmware) { f.MAC = "52:54:00" }, `MAC "52:54:00"`},
		{"long MAC", func(f *Firmware) { f.MAC = "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01" }, "want six hex bytes"},
		{"bad UUID", func(f *Firmware) { f.UUID = "4C4C4544" }, `UUID "4C4C4544"`},
		{"no client", func(f *Firmware) { f.Client = nil }, "no HTTP client"},
		{"callback server gone", func(*Firmware) {}, "imgfetch " + gone.URL + "/pxe/booted?token=REDACTED: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := ok
			tc.edit(&f)
			_, err := f.Boot(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret-token") {
				t.Fatalf("Boot: %v; want an error containing %q and no token", err, tc.want)
			}
		})
	}
}

// TestLabProfile: the lab's PXE config loads as the server loads it, and
// its one group gives every host the profile that fetches the callback.
func TestLabProfile(t *testing.T) {
	t.Parallel()
	cfg, err := pxe.Parse("/etc/caretaker/pxe.yml", []byte(LabProfile()))
	if err != nil {
		t.Fatal(err)
	}
	g, p, ok := cfg.Match(map[string]string{"mac": "52:54:00:1a:b0:01"})
	if !ok || g.ID != LabGroupID || p.ID != LabProfileID {
		t.Fatalf("Match = %+v, %+v, %v", g, p, ok)
	}
	// Rendered and run for real in TestReprovisionThroughLabBMC.
	if !strings.Contains(p.Script, "imgfetch {{ .CallbackURL }}\n") {
		t.Fatalf("profile script %q does not fetch the callback", p.Script)
	}
}
