// Package yamlfile loads YAML configuration strictly: unknown fields are
// errors, and every error names the file, the line and the field path, so an
// operator can fix a broken file without guessing.
package yamlfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Validator is implemented by configuration types that check themselves
// after decoding. Validate should return FieldErrors (or errors.Join of
// them) so the loader can attach the line of the offending field.
type Validator interface {
	Validate() error
}

// FieldError is a validation error about one field, named by its path in
// the document ("rules[2].action").
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Errorf returns a FieldError for path.
func Errorf(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Error is a loading error located in a file.
type Error struct {
	File string
	Line int    // 0 when unknown
	Path string // field path, "" when unknown
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads the file at path and decodes it into v with Decode.
func Load(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Decode(path, data, v)
}

// Decode decodes data (named name in errors) strictly into v, which should
// already hold its defaults; then, if v is a Validator, validates it. The
// returned error joins one *Error per problem found.
func Decode(name string, data []byte, v any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return &Error{File: name, Line: yamlLine(err.Error()), Msg: stripYAMLPrefix(err.Error())}
	}
	idx := indexPaths(&root)

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			var errs []error
			for _, msg := range te.Errors {
				errs = append(errs, typeError(name, msg, idx))
			}
			return errors.Join(errs...)
		}
		return &Error{File: name, Line: yamlLine(err.Error()), Msg: stripYAMLPrefix(err.Error())}
	}
	val, ok := v.(Validator)
	if !ok {
		return nil
	}
	if err := val.Validate(); err != nil {
		return locate(name, err, idx)
	}
	return nil
}

var (
	lineRE         = regexp.MustCompile(`line (\d+)`)
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	typeErrRE      = regexp.MustCompile(`^line (\d+): (.*)$`)
	// cannotUnmarshalRE takes apart yaml.v3's "cannot unmarshal !!seq into
	// T" and "cannot unmarshal !!str `value` into T" (value truncated).
	cannotUnmarshalRE = regexp.MustCompile("(?s)^line \\d+: cannot unmarshal (!!\\w+)(?: `(.*)`)? into ")
)

func yamlLine(msg string) int {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func stripYAMLPrefix(msg string) string {
	msg = strings.TrimPrefix(msg, "yaml: ")
	if m := typeErrRE.FindStringSubmatch(msg); m != nil {
		return m[2]
	}
	return msg
}

func typeError(file, msg string, idx *pathIndex) error {
	if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: file, Line: line, Path: idx.keyAt(line, m[2]), Msg: "unknown field"}
	}
	line := yamlLine(msg)
	path := idx.valueAt(line)
	if m := cannotUnmarshalRE.FindStringSubmatch(msg); m != nil {
		if p, ok := idx.nodeAt(line, m[1], m[2]); ok {
			path = p
		}
	}
	return &Error{File: file, Line: line, Path: path, Msg: stripYAMLPrefix(msg)}
}

// locate turns validation errors into located Errors.
func locate(file string, err error, idx *pathIndex) error {
	var errs []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		var fe *FieldError
		if errors.As(e, &fe) {
			errs = append(errs, &Error{File: file, Line: idx.line(fe.Path), Path: fe.Path, Msg: fe.Msg})
			return
		}
		errs = append(errs, &Error{File: file, Msg: e.Error()})
	}
	walk(err)
	return errors.Join(errs...)
}

// pathIndex maps field paths to the lines where they appear.
type pathIndex struct {
	lines map[string]int
	paths []pathAt
	// nodes holds every value node, so a type error, which yaml.v3 reports
	// by the line of the offending value rather than of its key, is
	// blamed on the right field.
	nodes []nodeAt
}

type nodeAt struct {
	path  string
	line  int
	tag   string // short tag: !!str, !!map, !!seq...
	value string // scalar value
}

type pathAt struct {
	path string
	key  string
	line int
}

func indexPaths(root *yaml.Node) *pathIndex {
	idx := &pathIndex{lines: map[string]int{}}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if n.Kind != yaml.DocumentNode {
			idx.nodes = append(idx.nodes, nodeAt{path: path, line: n.Line, tag: n.ShortTag(), value: n.Value})
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, val := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				idx.lines[p] = k.Line
				idx.paths = append(idx.paths, pathAt{path: p, key: k.Value, line: k.Line})
				walk(val, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				idx.lines[p] = c.Line
				idx.paths = append(idx.paths, pathAt{path: p, line: c.Line})
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return idx
}

// line returns the line of path, or of its nearest present ancestor: a
// missing required field is reported where its parent is.
func (x *pathIndex) line(path string) int {
	for path != "" {
		if l, ok := x.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

func (x *pathIndex) keyAt(line int, key string) string {
	for _, p := range x.paths {
		if p.line == line && p.key == key {
			return p.path
		}
	}
	return key
}

func (x *pathIndex) valueAt(line int) string {
	path := ""
	for _, p := range x.paths {
		if p.line == line {
			path = p.path // the deepest path starting on this line
		}
	}
	return path
}

// nodeAt returns the path of the node on line whose tag and (for scalars, as
// yaml.v3 truncates it in messages) value are those of a type error. Of
// several candidates the last, the deepest, wins, as in valueAt.
func (x *pathIndex) nodeAt(line int, tag, value string) (string, bool) {
	path, found := "", false
	for _, n := range x.nodes {
		if n.line != line || n.tag != tag {
			continue
		}
		if tag != "!!seq" && tag != "!!map" && truncated(n.value) != value {
			continue
		}
		path, found = n.path, true
	}
	return path, found
}

// truncated shortens a scalar the way yaml.v3 does in its type errors.
func truncated(v string) string {
	if len(v) > 10 {
		return v[:7] + "..."
	}
	return v
}

// Within places the errors of a nested value's validation under prefix:
// each FieldError's path gets the prefix, and other errors become
// FieldErrors at the prefix, one per error of a join, so every problem
// gets its own line.
func Within(prefix string, err error) []error {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		if fe, ok := e.(*FieldError); ok {
			out = append(out, &FieldError{Path: prefix + "." + fe.Path, Msg: fe.Msg})
			continue
		}
		out = append(out, Errorf(prefix, "%v", e))
	}
	return out
}
