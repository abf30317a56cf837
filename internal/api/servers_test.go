package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

type fixedServers struct {
	ss  []ServerStatus
	err error
}

func (f fixedServers) Servers(context.Context) ([]ServerStatus, error) { return f.ss, f.err }

func TestServersEndpoint(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "caretaker"
	}
	two := []ServerStatus{
		{Name: "s1", Address: "https://10.0.0.1:9300", Leader: true, Epoch: 57, Healthy: true},
		{Name: "s2", Address: "https://10.0.0.2:9300", Epoch: 57},
	}
	for _, tc := range []struct {
		name     string
		servers  Servers
		wantCode int
		want     string
	}{
		{"not clustered", nil, 200,
			`{"servers":[{"name":"` + host + `","address":"","leader":true,"epoch":0,"healthy":true}]}`},
		{"clustered", fixedServers{ss: two}, 200,
			`{"servers":[{"name":"s1","address":"https://10.0.0.1:9300","leader":true,"epoch":57,"healthy":true},` +
				`{"name":"s2","address":"https://10.0.0.2:9300","leader":false,"epoch":57,"healthy":false}]}`},
		{"none known", fixedServers{}, 200, `{"servers":[]}`},
		{"membership unreadable", fixedServers{err: errors.New("etcd: context deadline exceeded")}, 503,
			`{"error":"servers: etcd: context deadline exceeded"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := NewAuthenticator(testTokens)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(NewHandler(Options{Backend: &backend{}, Servers: tc.servers, Auth: auth}))
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+"/api/v1/servers", nil)
			req.Header.Set("Authorization", "Bearer view-tok")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			var got bytes.Buffer
			if err := json.Compact(&got, raw); err != nil {
				t.Fatalf("%s: %v", raw, err)
			}
			if resp.StatusCode != tc.wantCode || got.String() != tc.want {
				t.Errorf("%d %s\nwant %d %s", resp.StatusCode, got.String(), tc.wantCode, tc.want)
			}

			ss, err := NewClient(srv.URL, "view-tok", nil).Servers(t.Context())
			if tc.wantCode != 200 {
				var se *StatusError
				if !errors.As(err, &se) || se.Code != tc.wantCode {
					t.Errorf("client: %v, want a %d", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(ServerList{Servers: ss})
			if string(b) != tc.want {
				t.Errorf("client got %s, want %s", b, tc.want)
			}
		})
	}
}
