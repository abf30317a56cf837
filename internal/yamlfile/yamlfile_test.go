package yamlfile

import (
	"errors"
	"fmt"
	"testing"
)

type testDoc struct {
	Name  string            `yaml:"name"`
	Count int               `yaml:"count"`
	Items []testItem        `yaml:"items"`
	Tags  map[string]string `yaml:"tags"`
}

type testItem struct {
	ID   string            `yaml:"id"`
	Opts map[string]string `yaml:"opts"`
}

func (d *testDoc) Validate() error {
	var errs []error
	if d.Name == "invalid" {
		errs = append(errs, Errorf("name", "must not be %q", d.Name))
	}
	for i, it := range d.Items {
		if it.ID == "" {
			errs = append(errs, Errorf(fmt.Sprintf("items[%d].id", i), "is required"))
		}
	}
	if d.Count < 0 {
		errs = append(errs, errors.New("count is negative"))
	}
	return errors.Join(errs...)
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		data string
		want string // "" = no error
	}{
		{name: "valid", data: "name: a\nitems:\n  - id: x\n"},
		{name: "empty document is validated", data: ""},
		{
			name: "syntax error",
			data: "name: [a\n",
			want: "t.yml:1: did not find expected ',' or ']'",
		},
		{
			name: "unknown top-level field",
			data: "name: a\nnmae: b\n",
			want: "t.yml:2: nmae: unknown field",
		},
		{
			name: "unknown nested field",
			data: "items:\n  - id: x\n    idd: y\n",
			want: "t.yml:3: items[0].idd: unknown field",
		},
		{
			name: "scalar where an int belongs",
			data: "count: many\n",
			want: "t.yml:1: count: cannot unmarshal !!str `many` into int",
		},
		{
			name: "long scalar is truncated by yaml.v3 and still located",
			data: "name: a\ncount: a-very-long-value\n",
			want: "t.yml:2: count: cannot unmarshal !!str `a-very-...` into int",
		},
		{
			// yaml.v3 reports the line of the value, not of its key: a
			// block sequence under a key starts on the next line, where
			// deeper fields also start.
			name: "block sequence where a map belongs",
			data: "items:\n  - id: x\n    opts:\n      - k: v\n",
			want: "t.yml:4: items[0].opts: cannot unmarshal !!seq into map[string]string",
		},
		{
			name: "block map where a string belongs",
			data: "name:\n  first: a\n",
			want: "t.yml:2: name: cannot unmarshal !!map into string",
		},
		{
			name: "flow mapping: the right one of two values on a line",
			data: "items: [{opts: [1], id: x}]\n",
			want: "t.yml:1: items[0].opts: cannot unmarshal !!seq into map[string]string",
		},
		{
			name: "validation error on a present field",
			data: "count: 1\nname: invalid\n",
			want: "t.yml:2: name: must not be \"invalid\"",
		},
		{
			name: "missing field is located at its parent",
			data: "items:\n  - id: x\n  - opts: {a: b}\n",
			want: "t.yml:3: items[1].id: is required",
		},
		{
			name: "validation error that is not a FieldError has no line",
			data: "count: -1\n",
			want: "t.yml: count is negative",
		},
		{
			name: "several errors are all reported",
			data: "name: invalid\nitems:\n  - {}\n",
			want: "t.yml:1: name: must not be \"invalid\"\nt.yml:3: items[0].id: is required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d testDoc
			err := Decode("t.yml", []byte(tt.data), &d)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Decode error:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestErrorIsLocated(t *testing.T) {
	var d testDoc
	err := Decode("t.yml", []byte("nmae: a\n"), &d)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	if e.File != "t.yml" || e.Line != 1 || e.Path != "nmae" {
		t.Errorf("error = %+v", e)
	}
}
