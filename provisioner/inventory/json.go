package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"caretaker/internal/who"
	"caretaker/provisioner/bmc"
)

// hostJSON is a Host as the API and the store write it: the field names of
// the YAML file, and the BMC's timeout as a duration string ("10s").
type hostJSON struct {
	Name        string            `json:"name"`
	Serial      string            `json:"serial,omitempty"`
	MACs        []string          `json:"macs"`
	BMC         bmcJSON           `json:"bmc"`
	Role        string            `json:"role"`
	Labels      map[string]string `json:"labels,omitempty"`
	Agent       string            `json:"agent,omitempty"`
	Underlay    string            `json:"underlay_address,omitempty"`
	CPUs        int               `json:"cpus,omitempty"`
	MemoryBytes uint64            `json:"memory_bytes,omitempty"`
	AddedBy     *who.By           `json:"added_by,omitempty"`
}

// bmcJSON is bmc.Config with JSON names. It has no password, only the path
// of the file that holds it.
type bmcJSON struct {
	Type         string `json:"type"`
	Address      string `json:"address,omitempty"`
	Username     string `json:"username,omitempty"`
	PasswordFile string `json:"password_file,omitempty"`
	Insecure     bool   `json:"insecure,omitempty"`
	SystemID     string `json:"system_id,omitempty"`
	Timeout      string `json:"timeout,omitempty"`
	Retries      int    `json:"retries,omitempty"`
}

// MarshalJSON writes h with the field names of the inventory file.
func (h Host) MarshalJSON() ([]byte, error) {
	j := hostJSON{
		Name: h.Name, Serial: h.Serial, MACs: h.MACs, Role: h.Role, Labels: h.Labels,
		Agent: h.Agent, Underlay: h.UnderlayAddress, CPUs: h.CPUs, MemoryBytes: h.MemoryBytes, AddedBy: h.AddedBy,
		BMC: bmcJSON{
			Type: h.BMC.Type, Address: h.BMC.Address, Username: h.BMC.Username,
			PasswordFile: h.BMC.PasswordFile, Insecure: h.BMC.Insecure,
			SystemID: h.BMC.SystemID, Retries: h.BMC.Retries,
		},
	}
	if h.BMC.Timeout != 0 {
		j.BMC.Timeout = h.BMC.Timeout.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads h strictly: an unknown field is an error naming it.
// It does not validate.
func (h *Host) UnmarshalJSON(data []byte) error {
	var j hostJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "" {
			return errors.New("want a host as a JSON object")
		}
		if errors.As(err, &te) {
			return fmt.Errorf("%s: cannot take a JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type.Kind().String()))
		}
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the host object")
	}
	var timeout time.Duration
	if j.BMC.Timeout != "" {
		var err error
		if timeout, err = time.ParseDuration(j.BMC.Timeout); err != nil {
			return fmt.Errorf("bmc.timeout: %q is not a duration such as \"10s\"", j.BMC.Timeout)
		}
	}
	*h = Host{
		Name: j.Name, Serial: j.Serial, MACs: j.MACs, Role: j.Role, Labels: j.Labels,
		Agent: j.Agent, UnderlayAddress: j.Underlay, CPUs: j.CPUs, MemoryBytes: j.MemoryBytes, AddedBy: j.AddedBy,
		BMC: bmc.Config{
			Type: j.BMC.Type, Address: j.BMC.Address, Username: j.BMC.Username,
			PasswordFile: j.BMC.PasswordFile, Insecure: j.BMC.Insecure,
			SystemID: j.BMC.SystemID, Timeout: timeout, Retries: j.BMC.Retries,
		},
	}
	return nil
}

// jsonKind names a Go kind as JSON's kind of value.
func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	case "uint64":
		return "a non-negative integer"
	default:
		return "an integer"
	}
}
