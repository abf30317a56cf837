package guards

import "strings"

// Who is the authenticated identity behind a human's change (a pause, an
// approval, an action run by hand): the API token's name and role, and,
// only as a note, whom the token's holder says they act for. The name is
// never taken from the request.
type Who struct {
	Name       string // the token's name
	Role       string // the token's role
	OnBehalfOf string // what the request said in "author", if anything
}

// String is how the journal and the guards' reasons name who: "olga
// (operator) on behalf of alice".
func (w Who) String() string {
	var b strings.Builder
	b.WriteString(w.Name)
	if w.Role != "" {
		b.WriteString(" (" + w.Role + ")")
	}
	if w.OnBehalfOf != "" && w.OnBehalfOf != w.Name {
		b.WriteString(" on behalf of " + w.OnBehalfOf)
	}
	return b.String()
}

// DescribeAuthor names the author of a record, pause or approval from its
// fields, as Who.String does.
func DescribeAuthor(name, role, onBehalfOf string) string {
	return Who{Name: name, Role: role, OnBehalfOf: onBehalfOf}.String()
}
