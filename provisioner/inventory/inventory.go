// Package inventory holds the fleet's bare-metal hosts: those of the
// inventory file (YAML, loaded strictly) and those added through the API
// (kept in a kv.Store: a bbolt file, or etcd). Both together are the
// inventory; a host's name, MACs and serial are unique across it. A
// bmc.password_file, in the file or through the API, names a file inside
// the server's BMC secrets directory (provisioner.bmc.secrets_dir;
// bmc.CheckPasswordFile). Passwords themselves are never read, stored or
// shown here: only the name of the file holding one.
package inventory

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"

	"caretaker/internal/who"
	"caretaker/internal/yamlfile"
	"caretaker/provisioner/bmc"

	"gopkg.in/yaml.v3"
)

// Roles a host can have.
const (
	// RoleWorker hosts run guest cluster nodes.
	RoleWorker = "worker"
	// RoleMonitoring hosts run the appliance itself and never get guests.
	RoleMonitoring = "monitoring"
)

// DefaultAgentPort is the port of a host's caretaker agent when Agent is
// not set.
const DefaultAgentPort = 9301

// Host is one bare-metal host.
type Host struct {
	// Name is a DNS label; it is the host's `host` label in Prometheus.
	Name   string `yaml:"name"`
	Serial string `yaml:"serial"`
	// MACs are lower case with colons; the first is the NIC the host boots
	// from over PXE.
	MACs []string   `yaml:"macs"`
	BMC  bmc.Config `yaml:"bmc"`
	// Role is RoleWorker or RoleMonitoring.
	Role string `yaml:"role"`
	// Labels (rack, zone, ...) go onto the host's metrics; their names
	// are Prometheus label names.
	Labels map[string]string `yaml:"labels"`
	// Agent is host:port of the host's caretaker agent (default
	// <name>:9301).
	Agent string `yaml:"agent"`
	// UnderlayAddress is the host's VTEP: the address its guest clusters'
	// VXLAN devices send from, on the provisioner's underlay. Empty takes
	// the agent's address, which must then be an IP address.
	UnderlayAddress string `yaml:"underlay_address"`
	// CPUs and MemoryBytes are the host's capacity for placement; 0 means
	// learn it from the agent.
	CPUs        int    `yaml:"cpus"`
	MemoryBytes uint64 `yaml:"memory_bytes"`
	// AddedBy is who added the host through the API: the token's name and
	// role, and when (nil for hosts of the file). The API sets it; a
	// client's added_by is overwritten.
	AddedBy *who.By `yaml:"-"`
}

// clone returns h with its own slices and maps, so a caller cannot change
// the inventory through it.
func (h Host) clone() Host {
	h.MACs = slices.Clone(h.MACs)
	h.Labels = maps.Clone(h.Labels)
	if h.AddedBy != nil {
		by := *h.AddedBy
		h.AddedBy = &by
	}
	return h
}

// Inventory is the inventory file.
type Inventory struct {
	Hosts []Host `yaml:"hosts"`

	// source and data locate the hosts' fields for errors found after
	// loading (a conflict with a host added through the API).
	source string
	data   []byte
}

// Load reads and parses the inventory file at path.
func Load(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	return Parse(path, data)
}

// Parse parses an inventory file's content; name is the file's path, used in
// errors.
func Parse(name string, data []byte) (*Inventory, error) {
	var inv Inventory
	if err := yamlfile.Decode(name, data, &inv); err != nil {
		return nil, err
	}
	inv.source = name
	inv.data = data
	return &inv, nil
}

// Validate normalises the hosts (MACs to lower case with colons, the
// default Agent) and reports every invalid field and every name, MAC or
// serial used twice.
func (inv *Inventory) Validate() error {
	var errs []error
	type use struct {
		host int
		path string
	}
	names := map[string]int{}
	serials := map[string]int{}
	macs := map[string]use{}
	for i := range inv.Hosts {
		h := &inv.Hosts[i]
		prefix := "hosts[" + strconv.Itoa(i) + "]"
		errs = append(errs, yamlfile.Within(prefix, errors.Join(normalize(h)...))...)
		if j, ok := names[h.Name]; ok && h.Name != "" {
			errs = append(errs, yamlfile.Errorf(prefix+".name", "%q is also the name of hosts[%d]", h.Name, j))
		} else {
			names[h.Name] = i
		}
		if j, ok := serials[h.Serial]; ok && h.Serial != "" {
			errs = append(errs, yamlfile.Errorf(prefix+".serial", "%q is also the serial of hosts[%d] (%s)", h.Serial, j, inv.Hosts[j].Name))
		} else {
			serials[h.Serial] = i
		}
		for k, m := range h.MACs {
			if _, err := net.ParseMAC(m); err != nil {
				continue // reported by normalize
			}
			path := fmt.Sprintf("%s.macs[%d]", prefix, k)
			if u, ok := macs[m]; ok {
				if u.host == i {
					errs = append(errs, yamlfile.Errorf(path, "%s is also %s", m, u.path))
				} else {
					errs = append(errs, yamlfile.Errorf(path, "%s is also a MAC of hosts[%d] (%s)", m, u.host, inv.Hosts[u.host].Name))
				}
				continue
			}
			macs[m] = use{i, fmt.Sprintf("macs[%d]", k)}
		}
	}
	return errors.Join(errs...)
}

var (
	// nameRE is a DNS label (RFC 1123) in lower case: a host's name is also
	// its hostname, a URL path element and a Prometheus label value.
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// labelNameRE is Prometheus's label name syntax.
	labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// reservedLabels are set by the file_sd targets or by Prometheus itself;
// an inventory label of that name would overwrite them.
var reservedLabels = map[string]string{
	"host":     "every target gets host=<name>",
	"role":     "every target gets role=<role>",
	"job":      "Prometheus sets it to the scrape job",
	"instance": "Prometheus sets it to the target's address",
}

// normalize fills h's defaults, puts its MACs in canonical form and returns
// a FieldError (relative to the host) for each invalid field.
func normalize(h *Host) []error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, yamlfile.Errorf(path, format, args...))
	}
	switch {
	case h.Name == "":
		add("name", "must not be empty")
	case !nameRE.MatchString(h.Name):
		add("name", "%q is not a DNS label: lower-case letters, digits and '-', at most 63, beginning and ending with a letter or digit", h.Name)
	}
	if len(h.MACs) == 0 {
		add("macs", "at least one is required; the first is the NIC the host boots from over PXE")
	}
	for i, m := range h.MACs {
		hw, err := net.ParseMAC(m)
		switch {
		case err != nil:
			add(fmt.Sprintf("macs[%d]", i), "%q is not a MAC address", m)
		case len(hw) != 6:
			add(fmt.Sprintf("macs[%d]", i), "%q is not a 6-byte Ethernet MAC address", m)
		default:
			h.MACs[i] = hw.String()
		}
	}
	errs = append(errs, yamlfile.Within("bmc", h.BMC.Validate())...)
	switch h.Role {
	case RoleWorker, RoleMonitoring:
	case "":
		add("role", "must be %q or %q", RoleWorker, RoleMonitoring)
	default:
		add("role", "%q is neither %q nor %q", h.Role, RoleWorker, RoleMonitoring)
	}
	for _, k := range slices.Sorted(maps.Keys(h.Labels)) {
		path := "labels." + k
		switch why, reserved := reservedLabels[k]; {
		case !labelNameRE.MatchString(k):
			add(path, "%q is not a Prometheus label name: letters, digits and '_', not beginning with a digit", k)
		case len(k) >= 2 && k[:2] == "__":
			add(path, "names beginning with __ are reserved for Prometheus")
		case reserved:
			add(path, "reserved: %s", why)
		case h.Labels[k] == "":
			add(path, "must not be empty: Prometheus treats an empty label as absent")
		}
	}
	if h.Agent == "" && h.Name != "" {
		h.Agent = net.JoinHostPort(h.Name, strconv.Itoa(DefaultAgentPort))
	}
	if h.Agent != "" {
		if err := checkHostPort(h.Agent); err != nil {
			add("agent", "%v", err)
		}
	}
	if h.UnderlayAddress != "" {
		if a, err := netip.ParseAddr(h.UnderlayAddress); err != nil || a.Zone() != "" || !a.IsGlobalUnicast() && !a.IsPrivate() {
			add("underlay_address", "%q is not a unicast IP address such as 10.0.0.5", h.UnderlayAddress)
		}
	}
	if h.CPUs < 0 {
		add("cpus", "must not be negative, got %d", h.CPUs)
	}
	return errs
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not within [1, 65535]", addr, port)
	}
	return nil
}

// lineIndex maps the field paths of a YAML document ("hosts[2].macs[0]") to
// their lines. It is computed only for an error: parsing the document a
// third time would add a third to Parse. Parse has checked the document,
// so errors cannot happen.
func lineIndex(data []byte) map[string]int {
	var root yaml.Node
	lines := map[string]int{}
	if yaml.Unmarshal(data, &root) != nil {
		return lines
	}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := n.Content[i].Value
				if path != "" {
					p = path + "." + p
				}
				lines[p] = n.Content[i].Line
				walk(n.Content[i+1], p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := path + "[" + strconv.Itoa(i) + "]"
				lines[p] = c.Line
				walk(c, p)
			}
		}
	}
	walk(&root, "")
	return lines
}

// fieldError locates a problem with the field at path of the file's hosts:
// with file and line (from lines, lineIndex of the file) when the inventory
// was parsed, else by path alone.
func (inv *Inventory) fieldError(lines map[string]int, path, msg string) error {
	if inv.source == "" {
		return yamlfile.Errorf(path, "%s", msg)
	}
	return &yamlfile.Error{File: inv.source, Line: lines[path], Path: path, Msg: msg}
}
