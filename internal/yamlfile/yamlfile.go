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
	return &Error{File: file, Line: line, Path: idx.valueAt(line), Msg: stripYAMLPrefix(msg)}
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
