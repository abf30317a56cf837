// Package debpkg builds caretaker's Debian packages with nfpm as a
// library: caretaker-agent (the lean agent binary, its hardened unit,
// /etc/caretaker/agent.yml), caretaker-server (caretaker, its unit,
// /etc/caretaker/server.yml and policy.yml) and caretaker-runbook. The
// maintainer scripts are deploy/debian/{postinst,prerm,postrm}; the units
// are deploy/systemd/*.service. `make package` runs it through
// ./internal/debpkg/mkdeb.
package debpkg

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Names of the packages.
const (
	Agent   = "caretaker-agent"
	Server  = "caretaker-server"
	Runbook = "caretaker-runbook"
)

// Build says what to package and where to put it.
type Build struct {
	// Version is the packages' Debian version (see DebianVersion).
	Version string
	// Bin holds the binaries caretaker, caretaker-agent and runbook.
	Bin string
	// Root is the repository: deploy/ and README.md are read from it.
	Root string
	// Out is where the .deb files are written (made if missing).
	Out string
	// MTime is every file's modification time; zero: now.
	MTime time.Time
}

// daemonDepends are the Depends of the agent and the server: adduser, for
// the maintainer scripts that make the caretaker user. No library: the
// binaries are pure Go (libvirt is spoken to over its socket), static as
// make build builds them (CGO_ENABLED=0). runbook depends on nothing.
var daemonDepends = []string{"adduser"}

// Write builds the three packages and returns their paths.
func (b Build) Write() ([]string, error) {
	if b.MTime.IsZero() {
		b.MTime = time.Now()
	}
	if err := ValidVersion(b.Version); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.Out, 0o755); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp("", "caretaker-debpkg-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	// agent.yml: the example, every line commented, so a fresh host
	// expects no overlay until its operator says which.
	example, err := os.ReadFile(b.deploy("agent.example.yml"))
	if err != nil {
		return nil, err
	}
	agentYML := filepath.Join(stage, "agent.yml")
	if err := os.WriteFile(agentYML, CommentOut(example, agentHeader), 0o644); err != nil {
		return nil, err
	}

	var out []string
	for _, info := range []*nfpm.Info{b.agent(agentYML), b.server(), b.runbook()} {
		path, err := b.write(info)
		if err != nil {
			return out, fmt.Errorf("package %s: %w", info.Name, err)
		}
		out = append(out, path)
	}
	return out, nil
}

const agentHeader = `# /etc/caretaker/agent.yml: what this host is expected to have (caretaker-agent
# --config.file). As installed it expects nothing: every line of the example
# below is commented out. Uncomment and edit, then: systemctl restart caretaker-agent.
#
`

func (b Build) deploy(name string) string { return filepath.Join(b.Root, "deploy", name) }

func (b Build) common(name, description string) *nfpm.Info {
	return &nfpm.Info{
		Name:          name,
		Arch:          "amd64",
		Platform:      "linux",
		Version:       b.Version,
		VersionSchema: "none", // taken as it is: DebianVersion made it
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    "caretaker <caretaker@localhost>",
		Description:   description,
		License:       "Proprietary",
		MTime:         b.MTime,
		Overridables: nfpm.Overridables{
			Umask: 0o022,
			Deb:   nfpm.Deb{Compression: "gzip"},
		},
	}
}

func file(src, dst string, mode os.FileMode) *files.Content {
	return &files.Content{Source: src, Destination: dst, FileInfo: &files.ContentFileInfo{Mode: mode, Owner: "root", Group: "root"}}
}

func conffile(src, dst string, mode os.FileMode) *files.Content {
	c := file(src, dst, mode)
	c.Type = files.TypeConfig
	return c
}

// etcDir is /etc/caretaker as unpacked: 0750 root:root; the postinst gives
// it to group caretaker, which exists only then.
func etcDir() *files.Content {
	return &files.Content{Destination: "/etc/caretaker", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o750, Owner: "root", Group: "root"}}
}

func (b Build) scripts(info *nfpm.Info) {
	info.Scripts = nfpm.Scripts{
		PostInstall: b.deploy("debian/postinst"),
		PreRemove:   b.deploy("debian/prerm"),
		PostRemove:  b.deploy("debian/postrm"),
	}
}

func (b Build) agent(agentYML string) *nfpm.Info {
	info := b.common(Agent, `caretaker agent: host, KVM guest and overlay metrics, host-local actions
 The lean caretaker-agent binary for every hypervisor host: /metrics for the
 caretaker server (host, kvm and overlay collectors) and the actions the
 server's remediation takes (start guests, guest-cluster nodes, VXLAN
 overlays), behind a hardened systemd unit.`)
	info.Depends = daemonDepends
	info.Recommends = []string{"libvirt-daemon-system"}
	doc := "/usr/share/doc/" + Agent
	info.Contents = files.Contents{
		file(filepath.Join(b.Bin, "caretaker-agent"), "/usr/bin/caretaker-agent", 0o755),
		file(b.deploy("systemd/caretaker-agent.service"), "/lib/systemd/system/caretaker-agent.service", 0o644),
		etcDir(),
		conffile(agentYML, "/etc/caretaker/agent.yml", 0o640),
		file(filepath.Join(b.Root, "README.md"), doc+"/README.md", 0o644),
		file(b.deploy("agent.example.yml"), doc+"/examples/agent.example.yml", 0o644),
		file(b.deploy("agent-web.example.yml"), doc+"/examples/agent-web.example.yml", 0o644),
	}
	b.scripts(info)
	return info
}

func (b Build) server() *nfpm.Info {
	info := b.common(Server, `caretaker server: embedded Prometheus, alert rules, remediation, API
 The central caretaker server: it scrapes the hosts' caretaker agents into
 an embedded Prometheus, evaluates the alert rules, heals what breaks
 through a remediation engine with a durable journal, and answers the
 runbook CLI and Grafana. Runs as the caretaker user under a hardened
 systemd unit.`)
	info.Depends = daemonDepends
	info.Suggests = []string{Runbook}
	doc := "/usr/share/doc/" + Server
	info.Contents = files.Contents{
		file(filepath.Join(b.Bin, "caretaker"), "/usr/bin/caretaker", 0o755),
		file(b.deploy("systemd/caretaker-server.service"), "/lib/systemd/system/caretaker-server.service", 0o644),
		etcDir(),
		conffile(b.deploy("debian/server.yml"), "/etc/caretaker/server.yml", 0o640),
		conffile(b.deploy("policy.example.yml"), "/etc/caretaker/policy.yml", 0o640),
		file(filepath.Join(b.Root, "README.md"), doc+"/README.md", 0o644),
		file(b.deploy("server.example.yml"), doc+"/examples/server.example.yml", 0o644),
		file(b.deploy("inventory.example.yml"), doc+"/examples/inventory.example.yml", 0o644),
		file(b.deploy("pxe.example.yml"), doc+"/examples/pxe.example.yml", 0o644),
	}
	b.scripts(info)
	return info
}

func (b Build) runbook() *nfpm.Info {
	info := b.common(Runbook, `runbook: the on-call CLI of caretaker
 runbook asks a caretaker server what the fleet looks like and what its
 remediation engine did, and acts through it.`)
	info.Contents = files.Contents{
		file(filepath.Join(b.Bin, "runbook"), "/usr/bin/runbook", 0o755),
		file(filepath.Join(b.Root, "README.md"), "/usr/share/doc/"+Runbook+"/README.md", 0o644),
	}
	return info
}

func (b Build) write(info *nfpm.Info) (string, error) {
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", err
	}
	path := filepath.Join(b.Out, fmt.Sprintf("%s_%s_%s.deb", info.Name, b.Version, info.Arch))
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// CommentOut returns header and then src with every line that is not
// already a comment or blank commented out.
func CommentOut(src []byte, header string) []byte {
	var buf bytes.Buffer
	buf.WriteString(header)
	sc := bufio.NewScanner(bytes.NewReader(src))
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		switch {
		case t == "":
			buf.WriteString("\n")
		case strings.HasPrefix(t, "#"):
			buf.WriteString(line + "\n")
		default:
			buf.WriteString("# " + line + "\n")
		}
	}
	return buf.Bytes()
}

var (
	describeTag = regexp.MustCompile(`^v?([0-9][0-9A-Za-z.]*)(?:-([0-9]+)-g([0-9a-f]+))?(-dirty)?$`)
	describeSHA = regexp.MustCompile(`^([0-9a-f]{4,40})(-dirty)?$`)
	debVersion  = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)
	dateDigits  = regexp.MustCompile(`^[0-9]{8,14}$`)
)

// DebianVersion turns `git describe --tags --always --dirty` (describe)
// and the commit's time as YYYYMMDD[hhmmss] (date) into a Debian version
// that orders builds:
//
//	v1.2.0                        → 1.2.0
//	v1.2.0-3-gabc1234             → 1.2.0+git20260101120000.3.abc1234
//	abc1234 (no tag)              → 0.0.0~git20260101120000.abc1234
//	…-dirty                       → ….dirty
//	dev, or no date without a tag → 0.0.0~dev[<date>]
//
// ~ sorts before anything, so a tagged 0.0.1 is newer than every untagged
// build; the date orders untagged builds.
func DebianVersion(describe, date string) (string, error) {
	if date != "" && !dateDigits.MatchString(date) {
		return "", fmt.Errorf("version date %q: want YYYYMMDD or YYYYMMDDhhmmss", date)
	}
	dirty := func(s string) string {
		if s != "" {
			return ".dirty"
		}
		return ""
	}
	var v string
	switch m, s := describeTag.FindStringSubmatch(describe), describeSHA.FindStringSubmatch(describe); {
	case describe == "" || describe == "dev":
		v = "0.0.0~dev" + date
	case s != nil && date != "":
		// An untagged commit: a hex abbreviation (checked before the tag
		// form: "abc1234" could pass for a tag that starts with a digit).
		v = "0.0.0~git" + date + "." + s[1] + dirty(s[2])
	case s != nil:
		v = "0.0.0~dev." + s[1] + dirty(s[2])
	case m != nil && m[2] == "":
		v = m[1] + dirty(m[4])
	case m != nil:
		d := date
		if d == "" {
			d = "0"
		}
		v = m[1] + "+git" + d + "." + m[2] + "." + m[3] + dirty(m[4])
	default:
		return "", fmt.Errorf("version %q: not what git describe --tags --always --dirty gives", describe)
	}
	return v, ValidVersion(v)
}

// ValidVersion checks v is a Debian upstream version without epoch or
// revision: a digit first, then letters, digits, ".", "+" and "~".
func ValidVersion(v string) error {
	if !debVersion.MatchString(v) {
		return fmt.Errorf("%q is not a Debian version (a digit, then letters, digits, . + ~)", v)
	}
	return nil
}
