package remediation

import "fmt"

// String names a verdict in the tests' messages.
func (v verdict) String() string {
	switch v {
	case verdictAct:
		return "act"
	case verdictWait:
		return "wait"
	case verdictEscalate:
		return "escalate"
	case verdictDone:
		return "done"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}
