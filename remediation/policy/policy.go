// Package policy holds the remediation policy: which alert, identified by its
// labels, is healed by which action. The policy is an operator's file, so it
// is loaded strictly and every mistake is reported with its file, line and
// field before the engine ever acts on it.
package policy

import (
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"

	"caretaker/internal/yamlfile"
	"caretaker/remediation/command"
)

// The actions a rule may name.
const (
	// ActionRestartVM starts a guest that is defined on its host but not
	// running.
	ActionRestartVM = "restart-vm"
	// ActionRecreateVM re-creates a guest from its desired state, through
	// the provisioner.
	ActionRecreateVM = "recreate-vm"
	// ActionReprovisionHost reinstalls a host over PXE, through the
	// provisioner.
	ActionReprovisionHost = "reprovision-host"
	// ActionRepairOverlay has the host's agent re-create a cluster's VXLAN
	// device, bridge membership and FDB entries.
	ActionRepairOverlay = "repair-overlay"
	// ActionRunCommand runs the rule's command on the server.
	ActionRunCommand = "run-command"
	// ActionNotifyOnly records the alert and does nothing: the journal and
	// the audit stream tell people.
	ActionNotifyOnly = "notify-only"
)

// KnownActions returns the actions a rule may name. It returns a fresh slice
// so no caller can change what another one sees.
func KnownActions() []string {
	return []string{ActionRestartVM, ActionRecreateVM, ActionReprovisionHost,
		ActionRepairOverlay, ActionRunCommand, ActionNotifyOnly}
}

// Policy is an ordered list of rules; the first rule that matches an alert
// decides its action.
type Policy struct {
	Rules []Rule `yaml:"rules"`
	// Guards is optional; Parse fills what the file leaves out from
	// DefaultGuards.
	Guards Guards `yaml:"guards"`
}

// GuardSettings returns the policy's guards, or DefaultGuards for a nil
// policy or one built in code without them.
func (p *Policy) GuardSettings() Guards {
	if p == nil || reflect.ValueOf(p.Guards).IsZero() {
		return DefaultGuards()
	}
	return p.Guards
}

// Rule maps alerts whose labels match to one action.
type Rule struct {
	Name string `yaml:"name"`
	// Match holds label equalities. As in Prometheus and Alertmanager, a
	// label that is absent has the value "".
	Match map[string]string `yaml:"match"`
	// MatchRE holds label regular expressions, anchored at both ends like
	// Prometheus' =~ so "lab-.*" cannot match "prod-lab-1".
	MatchRE map[string]string `yaml:"match_re"`
	Action  string            `yaml:"action"`
	// Escalate lists the actions tried, in order, once the action before
	// gave up (its attempts are spent); after the last, a human is paged
	// through the CaretakerRemediationFailed alert.
	Escalate []string `yaml:"escalate"`
	// Approval, when required, holds each action of the rule until a
	// human approves it through the API, for at most its TTL.
	Approval Approval `yaml:"approval"`
	// VerifyTimeout bounds the wait for proof that the target is healthy
	// again after an action; 0 is DefaultVerifyTimeout.
	VerifyTimeout time.Duration `yaml:"verify_timeout"`
	// Command is what run-command runs.
	Command *command.Spec `yaml:"command"`

	// re holds the compiled, anchored MatchRE; nil on a Rule that was
	// built in code rather than parsed, in which case Match compiles.
	re map[string]*regexp.Regexp
}

//go:embed default.yml
var defaultPolicy []byte

// Default returns the embedded default policy. It panics if that policy is
// invalid: that is a build defect, and the package's tests catch it.
func Default() *Policy {
	p, err := Parse("default.yml", defaultPolicy)
	if err != nil {
		panic(fmt.Sprintf("embedded default policy: %v", err))
	}
	return p
}

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a policy named name (the file name used in errors).
func Parse(name string, data []byte) (*Policy, error) {
	p := Policy{Guards: DefaultGuards()}
	if err := yamlfile.Decode(name, data, &p); err != nil {
		return nil, err
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		r.re = make(map[string]*regexp.Regexp, len(r.MatchRE))
		for label, expr := range r.MatchRE {
			re, err := compileAnchored(expr)
			if err != nil {
				// Validate has already compiled every expression.
				return nil, fmt.Errorf("%s: rules[%d].match_re.%s: %w", name, i, label, err)
			}
			r.re[label] = re
		}
	}
	return &p, nil
}

// Validate checks the policy after decoding; yamlfile attaches the lines.
func (p *Policy) Validate() error {
	if len(p.Rules) == 0 {
		return yamlfile.Errorf("rules", "at least one rule is required")
	}
	var errs []error
	names := map[string]int{}
	known := KnownActions()
	for i, r := range p.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		switch prev, dup := names[r.Name]; {
		case r.Name == "":
			errs = append(errs, yamlfile.Errorf(path+".name", "is required"))
		case dup:
			errs = append(errs, yamlfile.Errorf(path+".name", "%q is already used by rules[%d]", r.Name, prev))
		default:
			names[r.Name] = i
		}
		if len(r.Match) == 0 && len(r.MatchRE) == 0 {
			errs = append(errs, yamlfile.Errorf(path, "needs at least one matcher in match or match_re"))
		}
		for _, label := range sortedKeys(r.Match) {
			if !validLabelName(label) {
				errs = append(errs, yamlfile.Errorf(path+".match."+label, "invalid label name"))
			}
		}
		for _, label := range sortedKeys(r.MatchRE) {
			if !validLabelName(label) {
				errs = append(errs, yamlfile.Errorf(path+".match_re."+label, "invalid label name"))
				continue
			}
			if _, err := compileAnchored(r.MatchRE[label]); err != nil {
				errs = append(errs, yamlfile.Errorf(path+".match_re."+label, "%v", err))
			}
		}
		switch {
		case r.Action == "":
			errs = append(errs, yamlfile.Errorf(path+".action", "is required"))
		case !slices.Contains(known, r.Action):
			errs = append(errs, yamlfile.Errorf(path+".action", "unknown action %q (known: %s)", r.Action, strings.Join(known, ", ")))
		}
		for j, a := range r.Escalate {
			field := fmt.Sprintf("%s.escalate[%d]", path, j)
			switch {
			case !slices.Contains(known, a):
				errs = append(errs, yamlfile.Errorf(field, "unknown action %q (known: %s)", a, strings.Join(known, ", ")))
			case slices.Contains(r.Chain()[:j+1], a):
				errs = append(errs, yamlfile.Errorf(field, "%q is already earlier in the chain", a))
			}
		}
		if slices.Contains(r.Chain(), ActionRunCommand) {
			if r.Command == nil {
				errs = append(errs, yamlfile.Errorf(path+".command", "is required by run-command"))
			} else {
				errs = append(errs, yamlfile.Within(path+".command", r.Command.Validate())...)
			}
		} else if r.Command != nil {
			errs = append(errs, yamlfile.Errorf(path+".command", "is only used by run-command, which the rule does not run"))
		}
		if r.Approval.TTL < 0 {
			errs = append(errs, yamlfile.Errorf(path+".approval.ttl", "%s is negative", r.Approval.TTL))
		}
		if r.VerifyTimeout < 0 {
			errs = append(errs, yamlfile.Errorf(path+".verify_timeout", "%s is negative", r.VerifyTimeout))
		}
	}
	errs = append(errs, p.Guards.validate()...)
	return errors.Join(errs...)
}

// Approval is a rule's demand for a human's yes.
type Approval struct {
	Required bool          `yaml:"required"`
	TTL      time.Duration `yaml:"ttl"` // 0 is DefaultApprovalTTL
}

// DefaultApprovalTTL is how long an approval is waited for when the rule
// does not say.
const DefaultApprovalTTL = time.Hour

// DefaultVerifyTimeout is how long the engine waits for proof that an
// action healed its target when the rule does not say.
const DefaultVerifyTimeout = 2 * time.Minute

// ApprovalTTL returns the rule's approval TTL or the default.
func (r Rule) ApprovalTTL() time.Duration {
	if r.Approval.TTL > 0 {
		return r.Approval.TTL
	}
	return DefaultApprovalTTL
}

// VerifyWithin returns the rule's verification timeout or the default.
func (r Rule) VerifyWithin() time.Duration {
	if r.VerifyTimeout > 0 {
		return r.VerifyTimeout
	}
	return DefaultVerifyTimeout
}

// Chain returns the rule's action followed by its escalations.
func (r Rule) Chain() []string {
	return append([]string{r.Action}, r.Escalate...)
}

// Rule returns the rule named name.
func (p *Policy) Rule(name string) (Rule, bool) {
	if p != nil {
		for _, r := range p.Rules {
			if r.Name == name {
				return r, true
			}
		}
	}
	return Rule{}, false
}

// Match returns the first rule whose matchers all hold for labels.
func (p *Policy) Match(labels map[string]string) (Rule, bool) {
	if p == nil {
		return Rule{}, false
	}
	for _, r := range p.Rules {
		if r.matches(labels) {
			return r, true
		}
	}
	return Rule{}, false
}

func (r *Rule) matches(labels map[string]string) bool {
	for label, want := range r.Match {
		if labels[label] != want {
			return false
		}
	}
	for label, expr := range r.MatchRE {
		re := r.re[label]
		if re == nil {
			var err error
			if re, err = compileAnchored(expr); err != nil {
				return false // an invalid matcher matches nothing
			}
		}
		if !re.MatchString(labels[label]) {
			return false
		}
	}
	return true
}

// compileAnchored compiles expr as Prometheus does for =~. The expression is
// checked on its own first so the error quotes what the operator wrote, not
// the anchored wrapper.
func compileAnchored(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		// Quote the expression: it may hold newlines, and an error that
		// spans lines would be mistaken for two.
		if se, ok := errors.AsType[*syntax.Error](err); ok {
			return nil, fmt.Errorf("invalid regexp: %s: %s", se.Code, strconv.Quote(se.Expr))
		}
		return nil, fmt.Errorf("invalid regexp: %w", err)
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

// validLabelName reports whether name is a classic Prometheus label name. A
// name outside it can never occur on our alerts, so it is a typo.
func validLabelName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// sortedKeys keeps the order of errors stable from one run to the next.
func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
