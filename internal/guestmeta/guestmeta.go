// Package guestmeta is caretaker's element in a libvirt domain's <metadata>:
// its XML namespace, the Metadata it carries (whether the guest is meant to
// run, its guest cluster and role), and how it is written and read. The
// agent writes it when it makes a node; the kvm collector reads it.
package guestmeta

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Namespace is the XML namespace of caretaker's element in a
// domain's <metadata>. The trailing version changes only with an
// incompatible change of the element.
const Namespace = "https://caretaker.dev/xmlns/guest/1"

// Prefix is the namespace prefix (libvirt's "key") to pass to
// virDomainSetMetadata along with Namespace.
const Prefix = "caretaker"

// The intents a guest's metadata can state.
const (
	IntentRunning = "running"
	IntentStopped = "stopped"
)

// maxBytes bounds what Parse reads: the element is written
// by whoever may edit the domain, and a few fields never need more.
const maxBytes = 64 << 10

// Metadata is what caretaker keeps in a domain's <metadata>: whether the
// guest is meant to run, and which guest cluster and role it belongs to.
type Metadata struct {
	// Intent is IntentRunning or IntentStopped; empty means unstated, and
	// the domain's autostart flag stands in for it.
	Intent  string
	Cluster string
	Role    string
}

// XML returns the element, for example
//
//	<guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>running</intent><cluster>lab</cluster><role>worker</role></guest>
//
// It declares the namespace as the default rather than with a prefix so that
// the one string serves both uses: libvirt 9.0's virDomainSetMetadata (with
// Prefix and Namespace) rejects an element that already
// declares the prefix it is asked to add ("failed to create a new XML
// namespace"), while an element without any namespace would be lost when
// embedded in a domain's <metadata>. Empty fields are left out.
func (m Metadata) XML() (string, error) {
	switch m.Intent {
	case "", IntentRunning, IntentStopped:
	default:
		return "", fmt.Errorf("encode guest metadata: intent %q is neither %q nor %q", m.Intent, IntentRunning, IntentStopped)
	}
	var b strings.Builder
	b.WriteString(`<guest xmlns="` + Namespace + `">`)
	for _, f := range []struct{ name, value string }{
		{"intent", m.Intent},
		{"cluster", m.Cluster},
		{"role", m.Role},
	} {
		if f.value == "" {
			continue
		}
		if err := checkValue(f.value); err != nil {
			return "", fmt.Errorf("encode guest metadata: %s: %w", f.name, err)
		}
		b.WriteString("<" + f.name + ">")
		if err := xml.EscapeText(&b, []byte(f.value)); err != nil {
			return "", fmt.Errorf("encode guest metadata: %s: %w", f.name, err)
		}
		b.WriteString("</" + f.name + ">")
	}
	b.WriteString("</guest>")
	return b.String(), nil
}

// checkValue rejects what would not read back as written:
// Parse trims surrounding space, and XML cannot carry invalid UTF-8
// or most control characters.
func checkValue(v string) error {
	if !utf8.ValidString(v) {
		return errors.New("not valid UTF-8")
	}
	if strings.TrimSpace(v) != v {
		return fmt.Errorf("%q has leading or trailing space", v)
	}
	for _, r := range v {
		if !isXMLChar(r) {
			return fmt.Errorf("%q contains %U, which XML cannot carry", v, r)
		}
	}
	return nil
}

// isXMLChar reports whether r is allowed in an XML 1.0 document.
func isXMLChar(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= unicode.MaxRune
}

// element is the shape of the element. Child names carry no
// namespace so that they match in every form the element takes: as written
// by XML, as embedded with a prefix in a domain definition, as rewritten by
// libvirt (which moves the children into the prefix), and as returned by
// virDomainGetMetadata (which strips the namespace altogether).
type element struct {
	XMLName xml.Name
	Intent  string `xml:"intent"`
	Cluster string `xml:"cluster"`
	Role    string `xml:"role"`
}

// Parse parses caretaker's metadata element, as returned by
// virDomainGetMetadata or as produced by Metadata.XML. Values are trimmed
// of surrounding space; the intent is not checked, so that a value this
// version does not know reaches the caller, which decides what it means.
// Unknown child elements are ignored.
func Parse(s string) (Metadata, error) {
	if len(s) > maxBytes {
		return Metadata{}, fmt.Errorf("parse guest metadata: %d bytes, more than the %d allowed", len(s), maxBytes)
	}
	dec := xml.NewDecoder(strings.NewReader(s))
	var el element
	if err := dec.Decode(&el); err != nil {
		return Metadata{}, fmt.Errorf("parse guest metadata: %w", err)
	}
	if el.XMLName.Local != "guest" {
		return Metadata{}, fmt.Errorf("parse guest metadata: root element is <%s>, want <guest>", el.XMLName.Local)
	}
	// libvirt returns the element without its namespace; anything else
	// must be ours.
	if el.XMLName.Space != "" && el.XMLName.Space != Namespace {
		return Metadata{}, fmt.Errorf("parse guest metadata: namespace %q, want %q", el.XMLName.Space, Namespace)
	}
	if err := expectEnd(dec); err != nil {
		return Metadata{}, fmt.Errorf("parse guest metadata: %w", err)
	}
	return Metadata{
		Intent:  strings.TrimSpace(el.Intent),
		Cluster: strings.TrimSpace(el.Cluster),
		Role:    strings.TrimSpace(el.Role),
	}, nil
}

// expectEnd checks that only space, comments and processing instructions
// follow the root element.
func expectEnd(dec *xml.Decoder) error {
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			return fmt.Errorf("second root element <%s>", tok.Name.Local)
		case xml.CharData:
			if strings.TrimSpace(string(tok)) != "" {
				return fmt.Errorf("text %q after the root element", tok)
			}
		}
	}
}

// FromDomain finds caretaker's element among the children of a
// domain's <metadata> (inner is its inner XML), where each application has
// its own namespace. It reports false, and no error, when there is none.
func FromDomain(inner string) (Metadata, bool, error) {
	if len(inner) > maxBytes {
		return Metadata{}, false, fmt.Errorf("parse domain metadata: %d bytes, more than the %d allowed", len(inner), maxBytes)
	}
	dec := xml.NewDecoder(strings.NewReader(inner))
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return Metadata{}, false, nil
		}
		if err != nil {
			return Metadata{}, false, fmt.Errorf("parse domain metadata: %w", err)
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if start.Name.Space != Namespace || start.Name.Local != "guest" {
			if err := dec.Skip(); err != nil {
				return Metadata{}, false, fmt.Errorf("parse domain metadata: %w", err)
			}
			continue
		}
		var el element
		if err := dec.DecodeElement(&el, &start); err != nil {
			return Metadata{}, false, fmt.Errorf("parse guest metadata: %w", err)
		}
		return Metadata{
			Intent:  strings.TrimSpace(el.Intent),
			Cluster: strings.TrimSpace(el.Cluster),
			Role:    strings.TrimSpace(el.Role),
		}, true, nil
	}
}
