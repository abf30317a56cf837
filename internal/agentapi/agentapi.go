// Package agentapi is the caretaker agent's HTTP API as both sides see it:
// the wire types of its actions (domains, nodes, overlays) and the client
// the server acts through, one per host (Hosts).
package agentapi

// EpochHeader carries the leader's epoch (its election revision in etcd,
// strictly increasing across leaders, in decimal) on every request that
// changes something. An agent remembers the highest epoch it has seen and
// refuses a lower one with 409 and an ErrorBody with Fenced set; a request
// without the header (a single, unclustered server) is not fenced.
const EpochHeader = "Caretaker-Epoch"

// ErrorBody is the body of the agent's error answers. Fenced is set only on
// the 409 refusing a request of an older leader (EpochHeader).
type ErrorBody struct {
	Error  string `json:"error"`
	Fenced bool   `json:"fenced,omitempty"`
}

// Domain is a libvirt domain as the API reports it.
type Domain struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
	// State is virsh's word for StateCode: "running", "shut off",
	// "paused", …
	State string `json:"state"`
	// StateCode is libvirt's virDomainState, ReasonCode its reason, whose
	// meaning depends on the state (as in caretaker_kvm_domain_state and
	// caretaker_kvm_domain_state_reason).
	StateCode  int `json:"state_code"`
	ReasonCode int `json:"reason_code"`
}

// The results of a start.
const (
	ResultStarted        = "started"
	ResultAlreadyRunning = "already-running"
)

// StartResult is the answer to a start: what was done, and the domain's
// state afterwards.
type StartResult struct {
	Result string `json:"result"`
	Domain
}

// NodeRequest is the body of PUT /api/v1/nodes/{name}: a guest-cluster
// node, as the agent's guests.Node describes it.
type NodeRequest struct {
	Cluster     string `json:"cluster"`
	Name        string `json:"name"`
	Role        string `json:"role"` // "master" or "worker"
	VCPUs       int    `json:"vcpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	DiskBytes   uint64 `json:"disk_bytes"`
	Bridge      string `json:"bridge"`
	// MAC empty derives one from the cluster and the name.
	MAC       string `json:"mac,omitempty"`
	BaseImage string `json:"base_image"`
	// Pool is the libvirt storage pool of the node's disks; empty is the
	// agent's (--guests.pool).
	Pool string `json:"pool,omitempty"`
	// UserData (with optional MetaData) for cloud-init, or Ignition.
	UserData string `json:"user_data,omitempty"`
	MetaData string `json:"meta_data,omitempty"`
	Ignition string `json:"ignition,omitempty"`
	// UUID is required: the UUID of the node's domain, or the one a new
	// node is to get. The agent changes (or, with replace, destroys) an
	// existing domain of that name only when it has this UUID and
	// caretaker metadata naming Cluster; otherwise it answers 409.
	UUID string `json:"uuid,omitempty"`
}

// NodeResponse is the answer to PUT /api/v1/nodes/{name}: the node's
// domain after the change, State in virsh's words ("running").
type NodeResponse struct {
	Name  string `json:"name"`
	UUID  string `json:"uuid"`
	State string `json:"state"`
}

// OverlayRepair is the answer to an overlay repair or PUT: what was
// changed on the host, in words; empty when the overlay was already as
// desired.
type OverlayRepair struct {
	Cluster string   `json:"cluster"`
	Changes []string `json:"changes"`
}
