package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeFileConfig writes runbook's config file as the lab does.
func writeFileConfig(path string, c fileConfig) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	var data string
	if c.URL != "" {
		data = fmt.Sprintf("url: %s\n", c.URL)
	}
	if c.URLs != nil {
		data += "urls:\n"
		for _, u := range c.URLs {
			data += fmt.Sprintf("  - %s\n", u)
		}
	}
	data += fmt.Sprintf("token: %s\n", c.Token)
	return os.WriteFile(path, []byte(data), 0o600)
}

// url or urls in the config file, and a comma-separated --url or
// RUNBOOK_URL: which servers runbook asks, and the exact error for a file
// or value it refuses.
func TestResolveURLs(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name            string
		file            string // the config file's text, "" for none
		envURL, flagURL string
		want            []string
		wantErr         string // {file} stands for the config file's path
	}{
		{name: "default", want: []string{defaultURL}},
		{name: "url", file: "url: https://ct1:9300\n", want: []string{"https://ct1:9300"}},
		{name: "urls", file: "urls:\n  - https://ct1:9300\n  - https://ct2:9300/\n  - http://10.0.0.3:9300/prefix\n",
			want: []string{"https://ct1:9300", "https://ct2:9300/", "http://10.0.0.3:9300/prefix"}},
		{name: "urls in flow style", file: "urls: [https://ct1:9300, https://ct2:9300]\n", want: []string{"https://ct1:9300", "https://ct2:9300"}},
		{name: "env list overrides urls", file: "urls: [https://ct1:9300]\n", envURL: "http://a:1, http://b:2",
			want: []string{"http://a:1", "http://b:2"}},
		{name: "flag list overrides env", envURL: "http://a:1", flagURL: "http://c:3,http://d:4,",
			want: []string{"http://c:3", "http://d:4"}},
		{name: "both set", file: "url: https://ct1:9300\nurls:\n  - https://ct2:9300\n",
			wantErr: "runbook config: {file}:2: urls: set either url or urls, not both"},
		{name: "bad url", file: "url: ct1:9300\n",
			wantErr: `runbook config: {file}:1: url: want an http:// or https:// URL with a host, such as https://caretaker:9300; got "ct1:9300"`},
		{name: "bad urls entry", file: "urls:\n  - https://ct1:9300\n  - ftp://ct2\n",
			wantErr: `runbook config: {file}:3: urls[1]: want an http:// or https:// URL with a host, such as https://caretaker:9300; got "ftp://ct2"`},
		{name: "unparsable urls entry", file: "urls:\n  - \"http://ct 1:9300\"\n",
			wantErr: `runbook config: {file}:2: urls[0]: not a URL: invalid character " " in host name`},
		{name: "credentials", file: "urls: [\"https://me:secret@ct1:9300\"]\n",
			wantErr: `runbook config: {file}:1: urls[0]: https://me:xxxxx@ct1:9300 holds credentials: put the token in token_file`},
		{name: "query", file: "url: https://ct1:9300/?x=1\n",
			wantErr: `runbook config: {file}:1: url: want a server's base URL without query or fragment; got "https://ct1:9300/?x=1"`},
		{name: "empty urls", file: "urls: []\n",
			wantErr: "runbook config: {file}:1: urls: want at least one URL"},
		{name: "twice", file: "urls:\n  - https://ct1:9300\n  - https://ct1:9300/\n",
			wantErr: "runbook config: {file}:3: urls[1]: https://ct1:9300/ is listed twice (urls[0])"},
		{name: "not a list", file: "urls: https://ct1:9300\n",
			wantErr: "runbook config: {file}:1: urls: cannot unmarshal !!str `https:/...` into []string"},
		{name: "bad env", envURL: "http://a:1,a:2",
			wantErr: `RUNBOOK_URL: want an http:// or https:// URL with a host, such as https://caretaker:9300; got "a:2"`},
		{name: "bad flag", flagURL: " , ",
			wantErr: "--url: want at least one URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yml")
			if tc.file != "" {
				if err := os.WriteFile(cfg, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			e := map[string]string{"RUNBOOK_CONFIG": cfg, "RUNBOOK_TOKEN": "t", "RUNBOOK_URL": tc.envURL}
			c, err := resolve(env(e), tc.flagURL, "")
			if tc.wantErr != "" {
				want := strings.ReplaceAll(tc.wantErr, "{file}", cfg)
				if err == nil || err.Error() != want {
					t.Fatalf("err = %v\nwant %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.URLs, tc.want) {
				t.Errorf("URLs = %q, want %q", c.URLs, tc.want)
			}
		})
	}
}

// What `caretaker lab` writes (its golden files) is what runbook reads.
func TestResolveLabConfig(t *testing.T) {
	for file, want := range map[string][]string{
		"../../internal/lab/testdata/runbook-one.yml":   {"http://127.0.0.1:9300"},
		"../../internal/lab/testdata/runbook-three.yml": {"http://127.0.0.1:9300", "http://127.0.0.1:9310", "http://127.0.0.1:9320"},
	} {
		c, err := resolve(env(map[string]string{"RUNBOOK_CONFIG": file}), "", "")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(c.URLs, want) || c.Token != "lab-token" {
			t.Errorf("%s: %q %q, want %q lab-token", file, c.URLs, c.Token, want)
		}
	}
}
