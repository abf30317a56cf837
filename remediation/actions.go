package remediation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"caretaker/remediation/command"
	"caretaker/remediation/policy"
)

// Hosts runs host-local actions through the agent on the target's host
// (the server wires agent HTTP clients behind it).
type Hosts interface {
	// StartGuest returns nil when the agent started the guest or it was
	// already running.
	StartGuest(ctx context.Context, host, uuid string) error
	// GuestRunning reports whether the guest runs, to verify an action.
	GuestRunning(ctx context.Context, host, uuid string) (bool, error)
	// RepairOverlay has the agent make the cluster's overlay match its
	// desired state and returns what it changed; none means it was whole.
	RepairOverlay(ctx context.Context, host, cluster string) ([]string, error)
}

// Provisioner re-creates guests and reinstalls hosts; the provisioner
// implements it. Without one, those actions fail as not available.
type Provisioner interface {
	RecreateVM(ctx context.Context, host, uuid string) error
	ReprovisionHost(ctx context.Context, host string) error
}

// ErrNotAvailable is the error of an action this server cannot perform.
var ErrNotAvailable = errors.New("not available")

// Target kinds.
const (
	kindGuest   = "guest"
	kindHost    = "host"
	kindOverlay = "overlay"
	kindAlert   = "alert" // run-command and notify-only without a host
)

// target is what an action works on.
type target struct {
	Kind    string
	Host    string
	UUID    string
	Domain  string // for people reading the journal; may be empty
	Cluster string
	Alert   string // kindAlert: the alert's name
}

// key identifies the target for the guards: one action at a time, the
// attempts and backoff, pauses.
func (t target) key() string {
	switch t.Kind {
	case kindGuest:
		return t.Host + "/" + t.UUID
	case kindHost:
		return t.Host
	case kindOverlay:
		return t.Host + "/overlay/" + t.Cluster
	}
	return "alert/" + t.Alert
}

func (t target) String() string {
	switch t.Kind {
	case kindGuest:
		if t.Domain != "" {
			return fmt.Sprintf("guest %s (%s) on %s", t.Domain, t.UUID, t.Host)
		}
		return fmt.Sprintf("guest %s on %s", t.UUID, t.Host)
	case kindHost:
		return "host " + t.Host
	case kindOverlay:
		return fmt.Sprintf("overlay of cluster %s on %s", t.Cluster, t.Host)
	}
	return "alert " + t.Alert
}

// verification says how the engine learns that an action healed.
type verification int

const (
	// verifyNone: the action changes nothing to verify (notify-only).
	verifyNone verification = iota
	// verifyCheck: a direct check of the target through its agent.
	verifyCheck
	// verifyResolved: the alert resolving within the rule's timeout.
	verifyResolved
)

// action is one thing the engine can do. Every action in
// policy.KnownActions has one; a test checks.
type action struct {
	kind string // the target kind it needs; "" takes any
	// run performs the action; out is what it printed, if anything.
	// labels and annotations are the alert's.
	run    func(ctx context.Context, e *Engine, t target, r policy.Rule, labels, annotations map[string]string) (out string, err error)
	verify verification
	// check reports whether the target is healthy; verifyCheck actions
	// and reconciliation after a restart use it.
	check func(ctx context.Context, e *Engine, t target) (bool, error)
	// idempotent actions do no harm when run again on a target that is
	// still unhealthy: one a stopped server (or leader) left running is
	// checked and, if need be, run again at once rather than only
	// verified.
	idempotent bool
}

func actions() map[string]action {
	guestRuns := func(ctx context.Context, e *Engine, t target) (bool, error) {
		return e.hosts.GuestRunning(ctx, t.Host, t.UUID)
	}
	return map[string]action{
		policy.ActionRestartVM: {kind: kindGuest, verify: verifyCheck, check: guestRuns, idempotent: true,
			run: func(ctx context.Context, e *Engine, t target, _ policy.Rule, _, _ map[string]string) (string, error) {
				if err := e.hosts.StartGuest(ctx, t.Host, t.UUID); err != nil {
					return "", fmt.Errorf("start %s: %w", t, err)
				}
				return "", nil
			}},
		policy.ActionRecreateVM: {kind: kindGuest, verify: verifyCheck, check: guestRuns,
			run: func(ctx context.Context, e *Engine, t target, _ policy.Rule, _, _ map[string]string) (string, error) {
				if e.provisioner == nil {
					return "", fmt.Errorf("recreate-vm is %w: this server has no provisioner to re-create guests with", ErrNotAvailable)
				}
				return "", e.provisioner.RecreateVM(ctx, t.Host, t.UUID)
			}},
		policy.ActionReprovisionHost: {kind: kindHost, verify: verifyResolved,
			run: func(ctx context.Context, e *Engine, t target, _ policy.Rule, _, _ map[string]string) (string, error) {
				if e.provisioner == nil {
					return "", fmt.Errorf("reprovision-host is %w: this server has no provisioner to reinstall hosts with", ErrNotAvailable)
				}
				return "", e.provisioner.ReprovisionHost(ctx, t.Host)
			}},
		policy.ActionRepairOverlay: {kind: kindOverlay, verify: verifyCheck, idempotent: true,
			run: func(ctx context.Context, e *Engine, t target, _ policy.Rule, _, _ map[string]string) (string, error) {
				changes, err := e.hosts.RepairOverlay(ctx, t.Host, t.Cluster)
				if err != nil {
					return strings.Join(changes, "\n"), fmt.Errorf("repair %s: %w", t, err)
				}
				if len(changes) == 0 {
					return "nothing to repair", nil
				}
				return strings.Join(changes, "\n"), nil
			},
			// A second repair that changes nothing proves the overlay
			// matches its desired state; it is idempotent, so checking
			// this way never does harm.
			check: func(ctx context.Context, e *Engine, t target) (bool, error) {
				changes, err := e.hosts.RepairOverlay(ctx, t.Host, t.Cluster)
				return err == nil && len(changes) == 0, err
			}},
		policy.ActionRunCommand: {verify: verifyResolved,
			run: func(ctx context.Context, e *Engine, t target, r policy.Rule, labels, annotations map[string]string) (string, error) {
				if r.Command == nil {
					return "", errors.New("the rule has no command")
				}
				res, err := command.Run(ctx, *r.Command, command.Data{Alert: labels["alertname"], Labels: labels, Annotations: annotations})
				out := string(res.Output)
				if res.Truncated {
					out += "\n[output truncated]"
				}
				return out, err
			}},
		policy.ActionNotifyOnly: {verify: verifyNone,
			run: func(context.Context, *Engine, target, policy.Rule, map[string]string, map[string]string) (string, error) {
				return "", nil
			}},
	}
}

// targetOf reads what act works on from an alert's labels, or says which
// labels are missing. Guests are named by host and libvirt UUID, which,
// unlike the name, cannot refer to another guest after a rename.
func targetOf(name string, act action, labels map[string]string) (target, error) {
	t := target{Host: labels["host"], UUID: labels["uuid"], Domain: labels["domain"],
		Cluster: labels["cluster"], Alert: labels["alertname"]}
	var need []string
	switch act.kind {
	case kindGuest:
		t.Kind, need = kindGuest, []string{"host", "uuid"}
	case kindHost:
		t.Kind, need = kindHost, []string{"host"}
	case kindOverlay:
		t.Kind, need = kindOverlay, []string{"host", "cluster"}
	default:
		switch {
		case t.Host != "" && t.UUID != "":
			t.Kind = kindGuest
		case t.Host != "":
			t.Kind = kindHost
		default:
			t.Kind = kindAlert
		}
	}
	var missing []string
	for _, l := range need {
		if labels[l] == "" {
			missing = append(missing, fmt.Sprintf("%q", l))
		}
	}
	switch len(missing) {
	case 0:
		return t, nil
	case 1:
		return target{}, fmt.Errorf("the alert has no %s label, which %s needs to find the %s", missing[0], name, act.kind)
	default:
		return target{}, fmt.Errorf("the alert has no %s labels, which %s needs to find the %s", strings.Join(missing, " or "), name, act.kind)
	}
}
