package agent

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/agent/guests"
	"caretaker/internal/agentapi"
	"caretaker/internal/httpjson"
	"caretaker/internal/libvirtconn"
)

// nodeOf is the node a PUT asks for.
func nodeOf(r agentapi.NodeRequest) guests.Node {
	return guests.Node{
		Cluster: r.Cluster, Name: r.Name, Role: r.Role, VCPUs: r.VCPUs,
		MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes, Bridge: r.Bridge,
		MAC: r.MAC, BaseImage: r.BaseImage, Pool: r.Pool,
		UserData: r.UserData, MetaData: r.MetaData, Ignition: r.Ignition, UUID: r.UUID,
	}
}

// maxNodeBody caps a PUT node's body, which carries the node's user data
// or Ignition config.
const maxNodeBody = 4 << 20

// nodeNameRe is guests' rule for node names, checked here too so that a
// DELETE of a name that cannot be a node gets 400, not 500.
var nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// nodes answers /api/v1/nodes/{name}.
type nodes struct {
	a *Agent
	// locks runs one change per node name at a time: a retry arriving
	// while the first attempt still runs must not race it in libvirt.
	locks keyedMutex
}

func (n *nodes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPut:
		n.put(w, r)
	case http.MethodDelete:
		n.delete(w, r)
	default:
		methodNotAllowed(w, r, "PUT, DELETE")
	}
}

// put creates the node, or keeps it as it is (guests.Create), or with
// ?replace=true destroys it and creates it afresh with the same UUID
// (guests.Recreate). It answers 201 when the domain did not exist before.
func (n *nodes) put(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	replace := false
	if v := r.URL.Query().Get("replace"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("query parameter replace=%q: want true or false", v))
			return
		}
		replace = b
	}
	var req agentapi.NodeRequest
	if err := httpjson.Decode(w, r, &req, maxNodeBody); err != nil {
		httpjson.Compact.DecodeError(w, err)
		return
	}
	if req.Name != name {
		httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("body names node %q, the path %q", req.Name, name))
		return
	}
	// The request names the domain it means: a domain of that name with
	// another UUID, or of another cluster, is never changed (409).
	if req.UUID == "" {
		httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("node %q: uuid: required, the UUID of the node's domain (a new node's is the one it is to get)", name))
		return
	}
	if req.Pool == "" {
		req.Pool = n.a.cfg.GuestPool
	}
	node := nodeOf(req)
	if err := node.Validate(); err != nil {
		httpjson.Compact.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	verb := "create"
	if replace {
		verb = "replace"
	}
	logger := n.a.logger.With("action", verb+"-node", "node", name, "cluster", req.Cluster, "pool", req.Pool)

	unlock := n.locks.lock(name)
	defer unlock()
	// The look-ups are bounded by the libvirt timeout, the work by the
	// longer workBound; one call per node at a time (the key).
	key := "node " + name
	var existed bool
	goOn := n.a.withLibvirt(w, r.Context(), key, 0, http.StatusInternalServerError, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		if err := n.a.checkBounds(conn, node); err != nil {
			httpjson.Compact.Error(w, http.StatusBadRequest, err.Error())
			return false
		}
		existing, err := domainUUID(conn, name)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("%s node %s: %v", verb, name, err))
			return false
		}
		existed = existing != ""
		// A new node is this host's: the server placed it here. An existing
		// domain this agent does not own is another host's on a shared
		// libvirtd (caretaker lab), and must not be replaced from here.
		if existed && !n.a.owns(name) {
			httpjson.Compact.Error(w, http.StatusConflict, fmt.Sprintf("%s node %s: a domain of that name exists and is not this agent's (domain filter %s)", verb, name, n.a.cfg.DomainFilter))
			return false
		}
		if code, msg := checkPool(conn, req.Pool); code != 0 {
			httpjson.Compact.Error(w, code, msg)
			return false
		}
		return true
	})
	if !goOn {
		return
	}
	n.a.withLibvirt(w, r.Context(), key, n.a.workBound(), http.StatusInternalServerError, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		opts := []guests.Option{guests.DomainType(n.a.cfg.GuestDomainType)}
		var uuid string
		var err error
		if replace {
			uuid, err = guests.Recreate(conn, node, opts...)
		} else {
			uuid, err = guests.Create(conn, node, opts...)
		}
		if errors.Is(err, guests.ErrNotThisNode) {
			logger.Warn(verb+" node refused", "err", err)
			httpjson.Compact.Error(w, http.StatusConflict, err.Error())
			return false
		}
		if err != nil {
			logger.Warn(verb+" node failed", "err", err)
			httpjson.Compact.Error(w, http.StatusInternalServerError, err.Error())
			return false
		}
		if n.a.cfg.DomainFilter != nil {
			n.a.created.add(name)
		}
		dom, err := libvirtconn.LookupDomain(conn, uuid)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("%s node %s: look up domain %s: %v", verb, name, uuid, libvirtMessage(err)))
			return false
		}
		d, err := describe(conn, dom)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("%s node %s: %v", verb, name, err))
			return false
		}
		code := http.StatusOK
		if !existed {
			code = http.StatusCreated
		}
		logger.Info(verb+" node done", "uuid", uuid, "state", d.State, "existed", existed)
		httpjson.Compact.Write(w, code, agentapi.NodeResponse{Name: d.Name, UUID: d.UUID, State: d.State})
		return false
	})
}

// delete destroys and undefines the node's domain and deletes its volumes,
// from the pool its disk is in (the agent's when the domain is gone). A
// node that is not there is deleted already: 204 too. The query names the
// node's cluster and UUID (?cluster=…&uuid=…); a domain of that name of
// another cluster, with another UUID or without caretaker's metadata is
// left alone: 409.
func (n *nodes) delete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !nodeNameRe.MatchString(name) {
		httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("node name %q: want 1-63 lowercase letters, digits and dashes, not starting or ending with a dash", name))
		return
	}
	cluster, uuid := r.URL.Query().Get("cluster"), r.URL.Query().Get("uuid")
	if !nodeNameRe.MatchString(cluster) {
		httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("delete node %s: query parameter cluster=%q: required, the node's cluster", name, cluster))
		return
	}
	if !validUUID(uuid) {
		httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("delete node %s: query parameter uuid=%q: required, the UUID of the node's domain", name, uuid))
		return
	}
	if f := n.a.cfg.DomainFilter; f != nil && !n.a.owns(name) {
		httpjson.Compact.Error(w, http.StatusNotFound, fmt.Sprintf("no node %q on this host: this agent's domain filter is %s", name, f))
		return
	}
	logger := n.a.logger.With("action", "delete-node", "node", name, "cluster", cluster, "uuid", uuid)
	unlock := n.locks.lock(name)
	defer unlock()
	key := "node " + name
	var pool string
	goOn := n.a.withLibvirt(w, r.Context(), key, 0, http.StatusInternalServerError, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		var err error
		pool, err = diskPool(conn, name)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("delete node %s: %v", name, err))
			return false
		}
		if pool == "" {
			pool = n.a.cfg.GuestPool
		}
		if code, msg := checkPool(conn, pool); code != 0 {
			httpjson.Compact.Error(w, code, msg)
			return false
		}
		return true
	})
	if !goOn {
		return
	}
	n.a.withLibvirt(w, r.Context(), key, n.a.workBound(), http.StatusInternalServerError, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		err := guests.Delete(conn, guests.Node{Name: name, Cluster: cluster, UUID: uuid, Pool: pool})
		if errors.Is(err, guests.ErrNotThisNode) {
			logger.Warn("delete node refused", "err", err)
			httpjson.Compact.Error(w, http.StatusConflict, err.Error())
			return false
		}
		if err != nil {
			logger.Warn("delete node failed", "err", err)
			httpjson.Compact.Error(w, http.StatusInternalServerError, err.Error())
			return false
		}
		n.a.created.remove(name)
		logger.Info("deleted node", "pool", pool)
		w.WriteHeader(http.StatusNoContent)
		return false
	})
}

// checkBounds refuses a node larger than this host allows: more vCPUs
// or memory than --guests.max-vcpus and --guests.max-memory-bytes (by
// default the host's CPUs and memory, as libvirt reports them), a disk
// larger than --guests.max-disk-bytes. The error names the field.
func (a *Agent) checkBounds(conn *libvirt.Libvirt, node guests.Node) error {
	maxVCPUs, maxMemory := a.cfg.GuestMaxVCPUs, a.cfg.GuestMaxMemoryBytes
	vcpusFrom, memoryFrom := "--guests.max-vcpus", "--guests.max-memory-bytes"
	if maxVCPUs == 0 || maxMemory == 0 {
		_, memoryKiB, cpus, _, _, _, _, _, err := conn.NodeGetInfo()
		if err != nil {
			return fmt.Errorf("node %q: read the host's CPUs and memory: %s", node.Name, libvirtMessage(err))
		}
		if maxVCPUs == 0 {
			maxVCPUs, vcpusFrom = int(cpus), "the host's CPUs; --guests.max-vcpus"
		}
		if maxMemory == 0 {
			maxMemory, memoryFrom = memoryKiB*1024, "the host's memory; --guests.max-memory-bytes"
		}
	}
	switch {
	case node.VCPUs > maxVCPUs:
		return fmt.Errorf("node %q of cluster %q: vcpus %d: want at most %d (%s)", node.Name, node.Cluster, node.VCPUs, maxVCPUs, vcpusFrom)
	case node.MemoryBytes > maxMemory:
		return fmt.Errorf("node %q of cluster %q: memory_bytes %d: want at most %d (%s)", node.Name, node.Cluster, node.MemoryBytes, maxMemory, memoryFrom)
	case node.DiskBytes > a.cfg.GuestMaxDiskBytes:
		return fmt.Errorf("node %q of cluster %q: disk_bytes %d: want at most %d (--guests.max-disk-bytes)", node.Name, node.Cluster, node.DiskBytes, a.cfg.GuestMaxDiskBytes)
	}
	return nil
}

// checkPool returns 503 and why when the storage pool cannot take nodes'
// disks: the host is not set up for guests, which no retry will change.
func checkPool(conn *libvirt.Libvirt, name string) (int, string) {
	pool, err := conn.StoragePoolLookupByName(name)
	switch {
	case libvirtconn.IsCode(err, libvirt.ErrNoStoragePool):
		return http.StatusServiceUnavailable, fmt.Sprintf("storage pool %q does not exist on this host: define it (virsh pool-define-as) or set --guests.pool", name)
	case err != nil:
		return http.StatusInternalServerError, fmt.Sprintf("look up storage pool %q: %s", name, libvirtMessage(err))
	}
	active, err := conn.StoragePoolIsActive(pool)
	if err != nil {
		return http.StatusInternalServerError, fmt.Sprintf("storage pool %q: %s", name, libvirtMessage(err))
	}
	if active == 0 {
		return http.StatusServiceUnavailable, fmt.Sprintf("storage pool %q is not active on this host: start it (virsh pool-start %s)", name, name)
	}
	return 0, ""
}

// domainUUID returns the UUID of the named domain, "" when there is none.
func domainUUID(conn *libvirt.Libvirt, name string) (string, error) {
	dom, err := conn.DomainLookupByName(name)
	if libvirtconn.IsCode(err, libvirt.ErrNoDomain) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up domain: %s", libvirtMessage(err))
	}
	return libvirtconn.UUIDString(dom.UUID), nil
}

// diskPool returns the storage pool of the named domain's first volume
// disk, "" when there is no such domain or disk.
func diskPool(conn *libvirt.Libvirt, name string) (string, error) {
	dom, err := conn.DomainLookupByName(name)
	if libvirtconn.IsCode(err, libvirt.ErrNoDomain) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up domain: %s", libvirtMessage(err))
	}
	s, err := conn.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return "", fmt.Errorf("read domain definition: %s", libvirtMessage(err))
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(s); err != nil {
		return "", fmt.Errorf("read domain definition: %w", err)
	}
	if d.Devices == nil {
		return "", nil
	}
	for _, disk := range d.Devices.Disks {
		if disk.Device == "disk" && disk.Source != nil && disk.Source.Volume != nil {
			return disk.Source.Volume.Pool, nil
		}
	}
	return "", nil
}

// keyedMutex is a mutex per key, kept only while someone holds or waits
// for it.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock locks key and returns its unlock.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
