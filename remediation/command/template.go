package command

import (
	"errors"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
)

// maxArgBytes is Linux's MAX_ARG_STRLEN: execve refuses a longer argument,
// so rendering stops there with a clearer error.
const maxArgBytes = 128 << 10

// parseArg parses one argument template. Beyond what text/template accepts,
// it allows only text and {{ value }} actions (no if, range, with, define or
// template: an argument is one value, and without loops rendering always
// ends quickly) and only the fields Data has, so a typo such as .Lables
// fails when the policy loads instead of when the alert fires.
func parseArg(text string) (*template.Template, error) {
	t, err := template.New("arg").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	if len(t.Templates()) > 1 {
		return nil, errors.New("template: arg: {{define}} is not allowed in an argument")
	}
	if t.Tree == nil { // only a {{define}} of "arg" itself could leave it empty
		return nil, errors.New("template: arg: empty template")
	}
	if err := checkNode(t.Tree, t.Tree.Root); err != nil {
		return nil, err
	}
	return t, nil
}

func checkNode(tree *parse.Tree, n parse.Node) error {
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			if err := checkNode(tree, c); err != nil {
				return err
			}
		}
		return nil
	case *parse.TextNode, *parse.CommentNode:
		return nil
	case *parse.ActionNode:
		return checkPipe(tree, n.Pipe)
	}
	kind := map[parse.NodeType]string{
		parse.NodeIf: "if", parse.NodeRange: "range", parse.NodeWith: "with",
		parse.NodeTemplate: "template", parse.NodeBreak: "break", parse.NodeContinue: "continue",
	}[n.Type()]
	if kind == "" {
		kind = n.String()
	}
	return nodeError(tree, n, fmt.Sprintf("{{%s}} is not allowed in an argument, only text and {{ value }}", kind))
}

func checkPipe(tree *parse.Tree, p *parse.PipeNode) error {
	if p == nil {
		return nil
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			var err error
			switch a := a.(type) {
			case *parse.FieldNode:
				err = checkField(a.Ident)
			case *parse.VariableNode:
				if a.Ident[0] == "$" && len(a.Ident) > 1 {
					err = checkField(a.Ident[1:])
				}
			case *parse.PipeNode:
				if err := checkPipe(tree, a); err != nil {
					return err
				}
			case *parse.ChainNode:
				if pipe, ok := a.Node.(*parse.PipeNode); ok {
					if err := checkPipe(tree, pipe); err != nil {
						return err
					}
				}
			}
			if err != nil {
				return nodeError(tree, a, err.Error())
			}
		}
	}
	return nil
}

func checkField(ident []string) error {
	switch ident[0] {
	case "Alert":
		if len(ident) > 1 {
			return errors.New(".Alert is a string and has no fields")
		}
	case "Labels", "Annotations":
	default:
		return fmt.Errorf("unknown field .%s: use .Alert, .Labels.<name> or .Annotations.<name>", ident[0])
	}
	return nil
}

// nodeError words an error as text/template does: "template: arg:1:5: …".
func nodeError(tree *parse.Tree, n parse.Node, msg string) error {
	loc, _ := tree.ErrorContext(n)
	return fmt.Errorf("template: %s: %s", loc, msg)
}

func renderArg(text string, d Data) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	t, err := parseArg(text)
	if err != nil {
		return "", err
	}
	var w argWriter
	if err := t.Execute(&w, d); err != nil {
		return "", err
	}
	return w.String(), nil
}

var errArgTooLong = fmt.Errorf("longer than %d bytes, the most execve accepts in one argument", maxArgBytes)

// argWriter fails once an argument outgrows maxArgBytes, which also stops
// the template's execution.
type argWriter struct{ strings.Builder }

func (w *argWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > maxArgBytes {
		return 0, errArgTooLong
	}
	return w.Builder.Write(p)
}
