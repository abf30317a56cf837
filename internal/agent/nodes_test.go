package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agent/guests/gueststest"
	"caretaker/internal/agentapi"
	"caretaker/internal/libvirtconn"
)

const qemuURI = gueststest.URI

// nodeHost is a storage pool with a base image and a bridge of one test's
// own on the real libvirtd, and an agent that puts nodes there.
type nodeHost struct {
	conn   *libvirt.Libvirt
	pool   libvirt.StoragePool
	name   string // the pool's name, also the bridge's
	client *agentapi.Client
	srv    *httptest.Server // the agent, for requests the client does not make
}

func newNodeHost(t *testing.T) *nodeHost {
	t.Helper()
	g := gueststest.New(t, "cta")
	h := &nodeHost{conn: g.Conn, pool: g.Pool, name: g.Name}

	a, err := New(Config{
		LibvirtURI: qemuURI, Token: token, Logger: testLogger(t),
		GuestPool: h.name, GuestDomainType: "qemu",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	h.client = agentapi.NewClient(srv.URL, token, srv.Client())
	h.srv = srv
	return h
}

func (h *nodeHost) node(name string) agentapi.NodeRequest {
	return agentapi.NodeRequest{
		UUID:    nodeUUID(name),
		Cluster: "cttest", Name: name, Role: "worker", VCPUs: 1,
		MemoryBytes: 64 << 20, DiskBytes: 128 << 20,
		Bridge: h.name, BaseImage: "base.qcow2",
		UserData: "#cloud-config\nhostname: " + name + "\n",
	}
}

// nodeUUID is a UUID of the name's own.
func nodeUUID(name string) string {
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:32]
}

// domainID returns the running domain's id, which changes when it is
// started again, or -1 when there is no such domain.
func (h *nodeHost) domainID(t *testing.T, name string) int {
	t.Helper()
	dom, err := h.conn.DomainLookupByName(name)
	if libvirtconn.IsCode(err, libvirt.ErrNoDomain) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	state, _, err := h.conn.DomainGetState(dom, 0)
	if err != nil || libvirt.DomainState(state) != libvirt.DomainRunning {
		t.Fatalf("domain %s: state %d, %v; want running", name, state, err)
	}
	return int(dom.ID)
}

func (h *nodeHost) volumes(t *testing.T) []string {
	t.Helper()
	if err := h.conn.StoragePoolRefresh(h.pool, 0); err != nil {
		t.Fatal(err)
	}
	n, err := h.conn.StoragePoolNumOfVolumes(h.pool)
	if err != nil {
		t.Fatal(err)
	}
	names, err := h.conn.StoragePoolListVolumes(h.pool, n)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestNodeLifecycle creates, keeps, replaces and deletes a node through the
// client, on QEMU.
func TestNodeLifecycle(t *testing.T) {
	t.Parallel()
	h := newNodeHost(t)
	n := h.node(h.name + "-w0")
	t.Cleanup(func() {
		// Whatever happened above: no domain or volume outlives the test.
		if err := h.client.DeleteNode(context.Background(), n.Cluster, n.Name, n.UUID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	created, err := h.client.PutNode(t.Context(), n, false)
	if err != nil {
		t.Fatalf("PutNode: %v", err)
	}
	if created.Name != n.Name || !validUUID(created.UUID) || created.State != "running" {
		t.Fatalf("PutNode: %+v, want the node running with a UUID", created)
	}
	id := h.domainID(t, n.Name)

	again, err := h.client.PutNode(t.Context(), n, false)
	if err != nil || again != created {
		t.Fatalf("second PutNode: %+v, %v; want %+v", again, err, created)
	}
	if id2 := h.domainID(t, n.Name); id2 != id {
		t.Errorf("second PutNode restarted the domain: id %d, then %d", id, id2)
	}

	// Another UUID under the same name is another machine: refused
	// without replace.
	other := n
	other.UUID = "00000000-0000-4000-8000-000000000001"
	_, err = h.client.PutNode(t.Context(), other, false)
	var se *agentapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.Contains(se.Msg, "exists with UUID "+created.UUID) {
		t.Errorf("PutNode with another UUID: %v, want a 409", err)
	}

	// Replace a broken node: stopped, its overlay grown (so that the old
	// one shows). It comes back running, same UUID, with a fresh overlay.
	dom, err := h.conn.DomainLookupByName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.conn.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	vol, err := h.conn.StorageVolLookupByName(h.pool, n.Name+".qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.conn.StorageVolResize(vol, 2*n.DiskBytes, 0); err != nil {
		t.Fatal(err)
	}
	replaced, err := h.client.PutNode(t.Context(), n, true)
	if err != nil || replaced != created {
		t.Fatalf("PutNode replace: %+v, %v; want %+v", replaced, err, created)
	}
	if id3 := h.domainID(t, n.Name); id3 == id {
		t.Errorf("PutNode replace kept the running domain (id %d)", id)
	}
	vol, err = h.conn.StorageVolLookupByName(h.pool, n.Name+".qcow2")
	if err != nil {
		t.Fatal(err)
	}
	_, capacity, _, err := h.conn.StorageVolGetInfo(vol)
	if err != nil || capacity != n.DiskBytes {
		t.Errorf("overlay after replace: capacity %d, %v; want a fresh %d-byte overlay", capacity, err, n.DiskBytes)
	}

	// NodeRunning is the existing Domain call.
	if d, err := h.client.Domain(t.Context(), created.UUID); err != nil || d.State != "running" {
		t.Errorf("Domain: %+v, %v", d, err)
	}

	if err := h.client.DeleteNode(t.Context(), n.Cluster, n.Name, n.UUID); err != nil {
		t.Fatalf("DeleteNode: %v", err)
	}
	if id := h.domainID(t, n.Name); id != -1 {
		t.Errorf("domain still there after DeleteNode")
	}
	if vols := h.volumes(t); len(vols) != 1 || vols[0] != "base.qcow2" {
		t.Errorf("volumes after DeleteNode: %v, want only base.qcow2", vols)
	}
	if err := h.client.DeleteNode(t.Context(), n.Cluster, n.Name, n.UUID); err != nil {
		t.Errorf("DeleteNode of a deleted node: %v", err)
	}
	if _, err := h.client.Domain(t.Context(), created.UUID); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("Domain after DeleteNode: %v, want a 404", err)
	}
}

// TestNodeStatus: replace of a node that does not exist (a retry whose
// first attempt never reached libvirt) creates it, 201; a PUT of the node
// that exists answers 200.
func TestNodeStatus(t *testing.T) {
	t.Parallel()
	h := newNodeHost(t)
	n := h.node(h.name + "-w1")
	t.Cleanup(func() {
		if err := h.client.DeleteNode(context.Background(), n.Cluster, n.Name, n.UUID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	body, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		query    string
		wantCode int
	}{
		{"?replace=true", http.StatusCreated},
		{"", http.StatusOK},
		{"?replace=false", http.StatusOK},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, h.srv.URL+"/api/v1/nodes/"+n.Name+tt.query, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := h.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got agentapi.NodeResponse
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tt.wantCode || got.State != "running" || got.Name != n.Name {
			t.Fatalf("PUT%s: %d %+v %v; want %d and the node running", tt.query, resp.StatusCode, got, err, tt.wantCode)
		}
		h.domainID(t, n.Name)
	}
}

// TestNodeNeverTouchesAnotherNode: a PUT (plain or replace) or DELETE
// naming a domain that exists as another cluster's node, another UUID, or
// a guest without caretaker's metadata gets 409 with the reason, and the
// domain stays as it was: same UUID, still running, its disk in place.
// Before, PUT ?replace=true destroyed and re-created whatever had the name.
func TestNodeNeverTouchesAnotherNode(t *testing.T) {
	t.Parallel()
	h := newNodeHost(t)
	victim := h.node(h.name + "-b-c-0")
	victim.Cluster = "a"
	t.Cleanup(func() {
		if err := h.client.DeleteNode(context.Background(), victim.Cluster, victim.Name, victim.UUID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if _, err := h.client.PutNode(t.Context(), victim, false); err != nil {
		t.Fatalf("PutNode: %v", err)
	}
	// A guest of the operator's own, no caretaker metadata.
	plain := h.name + "-plain"
	dom, err := h.conn.DomainDefineXML(`<domain type="qemu"><name>` + plain + `</name><uuid>` + nodeUUID(plain) + `</uuid><memory unit="MiB">64</memory><os><type arch="x86_64">hvm</type></os></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.conn.DomainUndefine(dom) })

	other := victim
	other.Cluster = "a-b" // its pool c names its first node the same
	otherUUID := victim
	otherUUID.UUID = nodeUUID("another")
	notNode := h.node(plain)
	for _, tt := range []struct {
		name    string
		call    func() error
		wantMsg string
	}{
		{"create for another cluster", func() error { _, err := h.client.PutNode(t.Context(), other, false); return err }, `is a node of cluster "a", not of "a-b"`},
		{"replace for another cluster", func() error { _, err := h.client.PutNode(t.Context(), other, true); return err }, `is a node of cluster "a", not of "a-b"`},
		{"delete for another cluster", func() error { return h.client.DeleteNode(t.Context(), other.Cluster, other.Name, other.UUID) }, `is a node of cluster "a", not of "a-b"`},
		{"create with another UUID", func() error { _, err := h.client.PutNode(t.Context(), otherUUID, false); return err }, "exists with UUID " + victim.UUID + ", not the node's " + otherUUID.UUID},
		{"replace with another UUID", func() error { _, err := h.client.PutNode(t.Context(), otherUUID, true); return err }, "exists with UUID " + victim.UUID},
		{"delete with another UUID", func() error { return h.client.DeleteNode(t.Context(), victim.Cluster, victim.Name, otherUUID.UUID) }, "exists with UUID " + victim.UUID},
		{"replace a guest that is no node", func() error { _, err := h.client.PutNode(t.Context(), notNode, true); return err }, "has no caretaker metadata"},
		{"delete a guest that is no node", func() error { return h.client.DeleteNode(t.Context(), notNode.Cluster, plain, notNode.UUID) }, "has no caretaker metadata"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := h.domainID(t, victim.Name)
			err := tt.call()
			var se *agentapi.StatusError
			if !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.Contains(se.Msg, tt.wantMsg) {
				t.Errorf("got %v, want 409 with %q", err, tt.wantMsg)
			}
			if got := h.domainID(t, victim.Name); got != id {
				t.Errorf("victim restarted: id %d, then %d", id, got)
			}
			if d, err := h.client.Domain(t.Context(), victim.UUID); err != nil || d.Name != victim.Name {
				t.Errorf("victim by its UUID: %+v, %v", d, err)
			}
			if vols := h.volumes(t); !slices.Contains(vols, victim.Name+".qcow2") {
				t.Errorf("volumes %v: the victim's disk is gone", vols)
			}
			if _, err := libvirtconn.LookupDomain(h.conn, nodeUUID(plain)); err != nil {
				t.Errorf("the plain guest: %v", err)
			}
		})
	}
}
