package clusters

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"caretaker/internal/golden"
	"caretaker/internal/httpjson"
	"caretaker/internal/who"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const labBody = `{"name": "lab", "pools": [
 {"name": "masters", "role": "master", "count": 1, "vcpus": 2, "memory_bytes": 4294967296, "disk_bytes": 21474836480},
 {"name": "workers", "role": "worker", "count": 2, "vcpus": 4, "memory_bytes": 8589934592, "disk_bytes": 42949672960}],
 "base_image": "debian-12.qcow2"}`

// imageBody asks for a one-node cluster "img" on the base image.
func imageBody(image string) string {
	return `{"name": "img", "pools": [{"name": "w", "role": "worker", "count": 1, "vcpus": 1, "memory_bytes": 1073741824, "disk_bytes": 1073741824}], "base_image": "` + image + `"}`
}

func TestHandler(t *testing.T) {
	s := newStore(t, VNIRange{})
	notified := 0
	h := Handler(s, func() { notified++ }, nil, nil)
	// Steps run in order against one store.
	steps := []struct {
		name, method, path, body string
		code                     int
		want                     string // in the body; for errors, the whole "error" value
		golden                   string // compare the whole body with testdata/<golden>
		notify                   bool
	}{
		{name: "empty list", method: "GET", path: "/api/v1/clusters", code: 200, want: `"clusters": []`},
		{name: "create", method: "POST", path: "/api/v1/clusters", body: labBody, code: 202, golden: "create.golden.json", notify: true},
		{name: "create again", method: "POST", path: "/api/v1/clusters", body: labBody, code: 409,
			want: "create cluster lab: cluster lab: already exists"},
		{name: "invalid spec", method: "POST", path: "/api/v1/clusters",
			body: `{"name": "averyverylongname", "pools": [{"name": "w", "role": "worker", "count": 1, "vcpus": 0, "memory_bytes": 1073741824, "disk_bytes": 1073741824}]}`,
			code: 400, want: `create cluster: name "averyverylongname": 17 characters, must be at most 12, so that the bridge br-<name> fits the 15-byte interface name limit; pools[0].vcpus: 0, must be at least 1`},
		{name: "image out of the pool", method: "POST", path: "/api/v1/clusters", body: imageBody("../../etc/shadow"), code: 400,
			want: `create cluster: base_image "../../etc/shadow": not a declared base image (provisioner.base_images); allowed: base.qcow2 (the default), debian-12.qcow2, rocky-9.qcow2, or none for the default`},
		{name: "another cluster's node disk", method: "POST", path: "/api/v1/clusters", body: imageBody("lab-workers-0.qcow2"), code: 400,
			want: `create cluster: base_image "lab-workers-0.qcow2": not a declared base image (provisioner.base_images); allowed: base.qcow2 (the default), debian-12.qcow2, rocky-9.qcow2, or none for the default`},
		{name: "undeclared image", method: "POST", path: "/api/v1/clusters", body: imageBody("ubuntu-24.04.qcow2"), code: 400,
			want: `create cluster: base_image "ubuntu-24.04.qcow2": not a declared base image (provisioner.base_images); allowed: base.qcow2 (the default), debian-12.qcow2, rocky-9.qcow2, or none for the default`},
		{name: "nothing stored", method: "GET", path: "/api/v1/clusters/img", code: 404, want: "cluster img: not found"},
		{name: "declared image", method: "POST", path: "/api/v1/clusters", body: imageBody("rocky-9.qcow2"), code: 202,
			want: `"base_image": "rocky-9.qcow2"`, notify: true},
		{name: "unknown field", method: "POST", path: "/api/v1/clusters", body: `{"name": "x", "cpus": 4}`, code: 400,
			want: `request body: unknown field "cpus"`},
		{name: "wrong type", method: "POST", path: "/api/v1/clusters", body: `{"name": "x", "pools": [{"count": "three"}]}`, code: 400,
			want: "request body: cannot unmarshal string into Go struct field Pool.Spec.pools.count of type int"},
		{name: "trailing data", method: "POST", path: "/api/v1/clusters", body: `{"name": "x"} {}`, code: 400,
			want: "request body: unexpected data after the JSON object"},
		{name: "empty body", method: "POST", path: "/api/v1/clusters", code: 400, want: "request body: empty; want a JSON object"},
		{name: "huge body", method: "POST", path: "/api/v1/clusters", body: `{"name": "` + strings.Repeat("x", 70000) + `"}`, code: 413,
			want: "request body: larger than 65536 bytes"},
		{name: "get", method: "GET", path: "/api/v1/clusters/lab", code: 200, want: `"name": "lab-workers-1"`},
		{name: "get missing", method: "GET", path: "/api/v1/clusters/nope", code: 404, want: "cluster nope: not found"},
		{name: "scale", method: "PATCH", path: "/api/v1/clusters/lab/pools/workers", body: `{"count": 3}`, code: 202,
			want: `"name": "lab-workers-2"`, notify: true},
		{name: "scale without count", method: "PATCH", path: "/api/v1/clusters/lab/pools/workers", body: `{}`, code: 400,
			want: `request body: "count" missing`},
		{name: "scale negative", method: "PATCH", path: "/api/v1/clusters/lab/pools/workers", body: `{"count": -2}`, code: 400,
			want: "scale cluster lab pool workers to -2: pools[1].count: -2, must not be negative"},
		{name: "scale missing pool", method: "PATCH", path: "/api/v1/clusters/lab/pools/gpus", body: `{"count": 1}`, code: 404,
			want: "scale cluster lab pool gpus to 1: pool gpus: not found"},
		{name: "scale missing cluster", method: "PATCH", path: "/api/v1/clusters/nope/pools/workers", body: `{"count": 1}`, code: 404,
			want: "scale cluster nope pool workers to 1: not found"},
		{name: "list", method: "GET", path: "/api/v1/clusters", code: 200, want: `"vni": 10000`},
		{name: "delete", method: "DELETE", path: "/api/v1/clusters/lab", code: 202, want: `"phase": "deleting"`, notify: true},
		{name: "scale while deleting", method: "PATCH", path: "/api/v1/clusters/lab/pools/workers", body: `{"count": 1}`, code: 409,
			want: "scale cluster lab pool workers to 1: the cluster is being deleted: conflict"},
		{name: "delete missing", method: "DELETE", path: "/api/v1/clusters/nope", code: 404, want: "delete cluster nope: not found"},
		{name: "wrong method", method: "PUT", path: "/api/v1/clusters/lab", code: 405},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := notified
			req := httptest.NewRequest(st.method, st.path, strings.NewReader(st.body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != st.code {
				t.Fatalf("%s %s: %d %s, want %d", st.method, st.path, rec.Code, body, st.code)
			}
			if got := notified - before; got != map[bool]int{true: 1}[st.notify] {
				t.Errorf("notified %d times", got)
			}
			switch {
			case st.golden != "":
				golden.Compare(t, filepath.Join("testdata", st.golden), rec.Body.Bytes(), *update)
			case st.code >= 400 && st.code != 405:
				var eb struct{ Error string }
				if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error != st.want {
					t.Errorf("error %q (%v), want %q", eb.Error, err, st.want)
				}
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
			case !strings.Contains(body, st.want):
				t.Errorf("body %s\nwant it to contain %s", body, st.want)
			}
		})
	}
}

func FuzzDecodeSpec(f *testing.F) {
	for _, seed := range []string{labBody, `{}`, `{"name": "a", "pools": []}`, `{"name": "x"} {}`, `[]`, `{"pools": [{"count": -1}]}`, `null`} {
		f.Add([]byte(seed))
	}
	s := newStore(f, VNIRange{})
	h := Handler(s, nil, nil, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := decodeSpec(bytes.NewReader(data))
		if err != nil {
			return
		}
		if spec.Validate() == nil {
			// A valid spec survives a round trip through JSON unchanged.
			out, err := json.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			again, err := decodeSpec(bytes.NewReader(out))
			if err != nil || !reflect.DeepEqual(spec, again) {
				t.Fatalf("round trip: %+v → %s → %+v, %v", spec, out, again, err)
			}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/clusters", bytes.NewReader(data)))
		// The store also refuses a base image it does not declare.
		_, imageErr := testImages.Resolve(spec.BaseImage)
		switch valid := spec.Validate() == nil && imageErr == nil; {
		case valid && rec.Code != 202 && rec.Code != 409:
			t.Fatalf("valid spec: %d %s", rec.Code, rec.Body)
		case !valid && rec.Code != 400:
			t.Fatalf("invalid spec: %d %s", rec.Code, rec.Body)
		}
		// The handler removes nothing, so drop what was made to keep the
		// VNI range and the file small.
		if rec.Code == 202 {
			if err := s.remove(spec.Name); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// decodeSpec parses a create request's body strictly, as the handler
// does: unknown fields and trailing data are errors. It does not validate
// the spec.
func decodeSpec(body io.Reader) (Spec, error) {
	var s Spec
	return s, httpjson.DecodeReader(body, &s)
}

// The cluster records who created and who last changed it, as the
// server's who.Func tells from the token; the client's author is kept
// only as on behalf of.
func TestHandlerRecordsWho(t *testing.T) {
	s := newStore(t, VNIRange{})
	tokens := map[string]string{"otto": "operator", "ada": "admin"}
	h := Handler(s, nil, func(r *http.Request, author, comment string) who.By {
		name := r.Header.Get("X-Token")
		return who.By{Name: name, Role: tokens[name], OnBehalfOf: author, Comment: comment}
	}, nil)
	do := func(token, method, path, body string) string {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("X-Token", token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 300 {
			t.Fatalf("%s %s: %d %s", method, path, w.Code, w.Body)
		}
		return w.Body.String()
	}
	do("otto", "POST", "/api/v1/clusters", strings.Replace(labBody, `"name": "lab"`, `"author": "mallory", "comment": "for the demo", "name": "lab"`, 1))
	c, err := s.Get("lab")
	if err != nil {
		t.Fatal(err)
	}
	want := who.By{Name: "otto", Role: "operator", OnBehalfOf: "mallory", Comment: "for the demo", At: t0}
	if c.CreatedBy == nil || *c.CreatedBy != want || c.ChangedBy != nil {
		t.Fatalf("created_by %+v changed_by %+v, want %+v and none", c.CreatedBy, c.ChangedBy, want)
	}
	got := do("otto", "GET", "/api/v1/clusters/lab", "")
	if !strings.Contains(got, `"created_by": {`) || !strings.Contains(got, `"name": "otto"`) || !strings.Contains(got, `"on_behalf_of": "mallory"`) {
		t.Errorf("GET lacks created_by:\n%s", got)
	}
	if strings.Contains(got, `"name": "mallory"`) {
		t.Errorf("the client's author shows as the identity:\n%s", got)
	}
	do("ada", "PATCH", "/api/v1/clusters/lab/pools/workers", `{"count": 1, "author": "mallory"}`)
	if c, _ = s.Get("lab"); c.ChangedBy == nil || c.ChangedBy.Name != "ada" || c.ChangedBy.Role != "admin" || c.CreatedBy.Name != "otto" {
		t.Fatalf("after scale: created_by %+v changed_by %+v", c.CreatedBy, c.ChangedBy)
	}
	do("ada", "DELETE", "/api/v1/clusters/lab", "")
	if c, _ = s.Get("lab"); c.ChangedBy == nil || c.ChangedBy.Name != "ada" || c.ChangedBy.OnBehalfOf != "" {
		t.Fatalf("after delete: changed_by %+v", c.ChangedBy)
	}
	// DELETE takes an optional body: the comment is kept, the author only
	// as on behalf of.
	do("ada", "DELETE", "/api/v1/clusters/lab", `{"comment": "rack swap", "author": "mallory"}`)
	want = who.By{Name: "ada", Role: "admin", OnBehalfOf: "mallory", Comment: "rack swap", At: t0}
	if c, _ = s.Get("lab"); c.ChangedBy == nil || *c.ChangedBy != want {
		t.Fatalf("after delete with a body: changed_by %+v, want %+v", c.ChangedBy, want)
	}
	for _, tt := range []struct{ body, err string }{
		{`{"reason": "x"}`, `request body: unknown field "reason"`},
		{`{"comment": "a\nb"}`, "comment: control character U+000A at byte 1 is not allowed"},
		{`{} {}`, "request body: unexpected data after the JSON object"},
	} {
		r := httptest.NewRequest("DELETE", "/api/v1/clusters/lab", strings.NewReader(tt.body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var e struct{ Error string }
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != http.StatusBadRequest || e.Error != tt.err {
			t.Errorf("DELETE with %s = %d %s, want 400 %q", tt.body, w.Code, w.Body, tt.err)
		}
	}
}
