// Package pxe boots the fleet's hosts over the network, in the manner of
// Matchbox: profiles say what to boot (kernel, initrds, arguments, an
// Ignition or cloud-config), groups choose a profile for a host by its MAC,
// UUID or other labels, and the most specific matching group wins. The
// handler serves the per-host iPXE scripts and configs over HTTP and takes
// the booted host's authenticated completion callback; RenderDnsmasq writes
// the dnsmasq configuration that hands PXE ROMs the iPXE binary over TFTP
// and iPXE the HTTP boot script.
package pxe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/template"

	"caretaker/internal/yamlfile"
)

// Config is the PXE configuration file.
type Config struct {
	Profiles []Profile `yaml:"profiles"`
	Groups   []Group   `yaml:"groups"`

	// dir is the directory of the file, against which ignition_file and
	// cloud_config_file are resolved; yaml never sets unexported fields.
	dir string
}

// Profile says what a host boots.
type Profile struct {
	ID string `yaml:"id"`
	// Kernel is an http(s) URL, or a path ("/assets/vmlinuz") that the
	// handler's base URL is put in front of.
	Kernel string   `yaml:"kernel"`
	Initrd []string `yaml:"initrd"`
	// Args are the kernel command line, each a text/template. A missing
	// map key is an error, to catch typos; optional metadata is read with
	// {{ with index .Group.Metadata "console" }}…{{ end }}.
	Args []string `yaml:"args"`
	// Ignition and CloudConfig are text/templates; the *File fields name a
	// file holding the template instead, relative to the config file, and
	// Load reads it into the field.
	Ignition        string `yaml:"ignition"`
	IgnitionFile    string `yaml:"ignition_file"`
	CloudConfig     string `yaml:"cloud_config"`
	CloudConfigFile string `yaml:"cloud_config_file"`
	// Script, a text/template, is the iPXE script's body (the lines after
	// "#!ipxe") in place of kernel, initrd and args: for what those cannot
	// say, such as a profile that only reports back (imgfetch {{ .CallbackURL }}).
	Script string `yaml:"script"`
}

// Group chooses Profile for the hosts whose labels hold every key and
// value of Selector; an empty selector matches every host.
type Group struct {
	ID       string            `yaml:"id"`
	Profile  string            `yaml:"profile"`
	Selector map[string]string `yaml:"selector"`
	Metadata map[string]string `yaml:"metadata"`
}

// Load reads and validates the PXE configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pxe config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a configuration named name; files it names are read
// relative to name's directory.
func Parse(name string, data []byte) (*Config, error) {
	c := Config{dir: filepath.Dir(name)}
	if err := yamlfile.Decode(name, data, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

var labelRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// Validate checks the configuration after decoding, reading the template
// files it names; yamlfile attaches the lines to the errors.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Profiles) == 0 {
		errs = append(errs, yamlfile.Errorf("profiles", "at least one profile is required"))
	}
	profiles := map[string]int{}
	for i := range c.Profiles {
		p := &c.Profiles[i]
		path := fmt.Sprintf("profiles[%d]", i)
		switch prev, dup := profiles[p.ID]; {
		case p.ID == "":
			errs = append(errs, yamlfile.Errorf(path+".id", "is required"))
		case dup:
			errs = append(errs, yamlfile.Errorf(path+".id", "%q is already used by profiles[%d]", p.ID, prev))
		default:
			profiles[p.ID] = i
		}
		switch {
		case p.Script != "":
			if p.Kernel != "" || len(p.Initrd) > 0 || len(p.Args) > 0 {
				errs = append(errs, yamlfile.Errorf(path+".script", "replaces kernel, initrd and args: set either script or those"))
			}
			if err := checkTemplate(p.Script); err != nil {
				errs = append(errs, yamlfile.Errorf(path+".script", "%v", err))
			}
		case p.Kernel == "":
			errs = append(errs, yamlfile.Errorf(path+".kernel", "is required (or script)"))
		}
		if p.Kernel != "" {
			if err := checkAsset(p.Kernel); err != nil {
				errs = append(errs, yamlfile.Errorf(path+".kernel", "%v", err))
			}
		}
		for j, initrd := range p.Initrd {
			if err := checkAsset(initrd); err != nil {
				errs = append(errs, yamlfile.Errorf(fmt.Sprintf("%s.initrd[%d]", path, j), "%v", err))
			}
		}
		for j, arg := range p.Args {
			if err := checkTemplate(arg); err != nil {
				errs = append(errs, yamlfile.Errorf(fmt.Sprintf("%s.args[%d]", path, j), "%v", err))
			}
		}
		errs = append(errs, c.readTemplate(path, "ignition", &p.Ignition, p.IgnitionFile)...)
		errs = append(errs, c.readTemplate(path, "cloud_config", &p.CloudConfig, p.CloudConfigFile)...)
	}

	groups := map[string]int{}
	selectors := map[string]int{}
	for i, g := range c.Groups {
		path := fmt.Sprintf("groups[%d]", i)
		switch prev, dup := groups[g.ID]; {
		case g.ID == "":
			errs = append(errs, yamlfile.Errorf(path+".id", "is required"))
		case dup:
			errs = append(errs, yamlfile.Errorf(path+".id", "%q is already used by groups[%d]", g.ID, prev))
		default:
			groups[g.ID] = i
		}
		if _, ok := profiles[g.Profile]; !ok {
			if g.Profile == "" {
				errs = append(errs, yamlfile.Errorf(path+".profile", "is required"))
			} else {
				errs = append(errs, yamlfile.Errorf(path+".profile", "unknown profile %q", g.Profile))
			}
		}
		bad := false
		for _, k := range sortedKeys(g.Selector) {
			if _, err := normalizeLabel(k, g.Selector[k]); err != nil {
				errs = append(errs, yamlfile.Errorf(path+".selector."+k, "%v", err))
				bad = true
			}
		}
		if bad {
			continue
		}
		// Two groups with one selector would make the choice between
		// them depend on file order: refuse it.
		key := selectorKey(g.Selector)
		if prev, dup := selectors[key]; dup {
			errs = append(errs, yamlfile.Errorf(path+".selector", "same selector as groups[%d] (%q)", prev, c.Groups[prev].ID))
		} else {
			selectors[key] = i
		}
	}
	return errors.Join(errs...)
}

// readTemplate moves the template in file (if named) into *text and
// checks that it parses.
func (c *Config) readTemplate(path, field string, text *string, file string) []error {
	if file != "" {
		if *text != "" {
			return []error{yamlfile.Errorf(path+"."+field+"_file", "set either %s or %s_file, not both", field, field)}
		}
		name := file
		if !filepath.IsAbs(name) {
			name = filepath.Join(c.dir, name)
		}
		b, err := readTemplateFile(name)
		if err != nil {
			return []error{yamlfile.Errorf(path+"."+field+"_file", "%v", err)}
		}
		*text = string(b)
		field += "_file"
	}
	if err := checkTemplate(*text); err != nil {
		return []error{yamlfile.Errorf(path+"."+field, "%v", err)}
	}
	return nil
}

// maxTemplateFile bounds a template file: configs are small, and a path
// such as /dev/zero must not exhaust memory.
const maxTemplateFile = 1 << 20

func readTemplateFile(name string) ([]byte, error) {
	// Stat before opening: opening a FIFO would block.
	st, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxTemplateFile {
		return nil, fmt.Errorf("%s: want a regular file of at most %d bytes", name, maxTemplateFile)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxTemplateFile))
}

func checkAsset(s string) error {
	if strings.HasPrefix(s, "/") {
		if strings.ContainsAny(s, " \t\r\n") {
			return fmt.Errorf("path %q contains white space", s)
		}
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(s, " \t\r\n") {
		return fmt.Errorf("%q is neither an http(s) URL nor a path starting with /", s)
	}
	return nil
}

func checkTemplate(text string) error {
	_, err := parseTemplate("t", text)
	return err
}

func parseTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		// Drop text/template's "template: t:" prefix; the field path says where.
		msg := strings.TrimPrefix(err.Error(), "template: "+name+":")
		return nil, fmt.Errorf("bad template: line %s", msg)
	}
	return t, nil
}

// normalizeLabel checks a selector or request label and returns its value
// in canonical form: MACs lower case with colons, UUIDs lower case.
func normalizeLabel(key, value string) (string, error) {
	if !labelRE.MatchString(key) {
		return "", fmt.Errorf("invalid label name %q", key)
	}
	switch key {
	case "mac":
		return NormalizeMAC(value)
	case "uuid":
		return normalizeUUID(value)
	}
	if value == "" {
		return "", errors.New("empty value")
	}
	return value, nil
}

// NormalizeMAC returns a 48-bit MAC address in the form aa:bb:cc:dd:ee:ff,
// accepting colons or hyphens (iPXE's ${mac:hexhyp}) and either case.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("invalid MAC address %q: want six hex bytes such as 52:54:00:aa:bb:01", s)
	}
	return hw.String(), nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func normalizeUUID(s string) (string, error) {
	l := strings.ToLower(s)
	if !uuidRE.MatchString(l) {
		return "", fmt.Errorf("invalid UUID %q: want the 8-4-4-4-12 hex form", s)
	}
	return l, nil
}

func selectorKey(sel map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(sel) {
		v, _ := normalizeLabel(k, sel[k])
		fmt.Fprintf(&b, "%s=%q,", k, v)
	}
	return b.String()
}

// Match returns the group for a host with labels (already normalised) and
// its profile: of the groups whose selector labels hold, the one with the
// most selector keys; of equally specific ones, the first in the file.
func (c *Config) Match(labels map[string]string) (*Group, *Profile, bool) {
	best := -1
	for i, g := range c.Groups {
		if !selects(g.Selector, labels) {
			continue
		}
		if best < 0 || len(g.Selector) > len(c.Groups[best].Selector) {
			best = i
		}
	}
	if best < 0 {
		return nil, nil, false
	}
	g := &c.Groups[best]
	i := slices.IndexFunc(c.Profiles, func(p Profile) bool { return p.ID == g.Profile })
	if i < 0 {
		return nil, nil, false
	}
	return g, &c.Profiles[i], true
}

func selects(sel, labels map[string]string) bool {
	for k, want := range sel {
		// A config built in code may hold a MAC in any accepted form.
		if n, err := normalizeLabel(k, want); err == nil {
			want = n
		}
		if got, ok := labels[k]; !ok || got != want {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
