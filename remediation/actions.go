package remediation

import (
	"context"
	"fmt"
	"strings"

	"caretaker/remediation/policy"
)

// target is what an action works on.
type target struct {
	Host   string
	UUID   string
	Domain string // for people reading the journal; may be empty
}

// key identifies the target for the one-action-at-a-time rule.
func (t target) key() string { return t.Host + "/" + t.UUID }

func (t target) String() string {
	if t.Domain != "" {
		return fmt.Sprintf("guest %s (%s) on %s", t.Domain, t.UUID, t.Host)
	}
	return fmt.Sprintf("guest %s on %s", t.UUID, t.Host)
}

// action is one thing the engine can do. Every action in policy.KnownActions
// has one; a test checks.
type action struct {
	// target finds what to act on from the alert's labels, or says which
	// labels are missing.
	target func(labels map[string]string) (target, error)
	// run performs the action and verifies its effect.
	run func(ctx context.Context, hosts Hosts, t target) error
}

func actions() map[string]action {
	return map[string]action{
		policy.ActionRestartVM: {target: guestTarget(policy.ActionRestartVM), run: restartVM},
	}
}

// guestTarget reads a guest from the labels the kvm collector puts on its
// alerts: the host it runs on and its libvirt UUID, which, unlike the name,
// cannot refer to another guest after a rename.
func guestTarget(name string) func(map[string]string) (target, error) {
	return func(labels map[string]string) (target, error) {
		var missing []string
		for _, l := range []string{"host", "uuid"} {
			if labels[l] == "" {
				missing = append(missing, fmt.Sprintf("%q", l))
			}
		}
		switch len(missing) {
		case 0:
			return target{Host: labels["host"], UUID: labels["uuid"], Domain: labels["domain"]}, nil
		case 1:
			return target{}, fmt.Errorf("the alert has no %s label, which %s needs to find the guest", missing[0], name)
		default:
			return target{}, fmt.Errorf("the alert has no %s labels, which %s needs to find the guest", strings.Join(missing, " or "), name)
		}
	}
}

// restartVM starts the guest and checks that it runs: the agent's word that
// it started is not proof that it stayed up.
func restartVM(ctx context.Context, hosts Hosts, t target) error {
	if err := hosts.StartGuest(ctx, t.Host, t.UUID); err != nil {
		return fmt.Errorf("start %s: %w", t, err)
	}
	running, err := hosts.GuestRunning(ctx, t.Host, t.UUID)
	if err != nil {
		return fmt.Errorf("verify %s: %w", t, err)
	}
	if !running {
		return fmt.Errorf("verify %s: not running after start", t)
	}
	return nil
}
