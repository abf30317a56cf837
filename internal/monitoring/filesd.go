package monitoring

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"gopkg.in/yaml.v3"
)

// File-based service discovery reads Prometheus file_sd files itself rather
// than through prometheus/discovery/file: that package needs
// github.com/fsnotify/fsnotify, which go.mod does not require. So files are
// polled, once per scrape interval: a target matters only when it is next
// scraped, and a few small files are cheap to read. The format and the
// `Source` of each group (`<path>:<index>`) are file_sd's.

// fileSDPattern is the file discoverer's rule for patterns: a glob only in
// the last path element, and an extension that says whether the file is
// JSON or YAML.
var fileSDPattern = regexp.MustCompile(`^[^*]*(\*[^/]*)?\.(json|yml|yaml|JSON|YML|YAML)$`)

func validateFileSD(patterns []string) error {
	for i, p := range patterns {
		if !fileSDPattern.MatchString(p) {
			return fmt.Errorf("monitoring options: FileSD[%d] %q: want a path whose last element may hold one *, ending in .json, .yml or .yaml", i, p)
		}
		if _, err := filepath.Match(p, ""); err != nil {
			return fmt.Errorf("monitoring options: FileSD[%d] %q: %w", i, p, err)
		}
	}
	return nil
}

// fileSD reads the file_sd files. It is used by one goroutine at a time.
type fileSD struct {
	patterns []string
	logger   *slog.Logger
	// files holds each file's content and groups as last read successfully:
	// a file that cannot be read or parsed keeps its previous targets, as
	// in Prometheus, so a half-written file does not drop a host.
	files map[string]fileSDFile
}

type fileSDFile struct {
	content []byte
	groups  []*targetgroup.Group
}

func newFileSD(patterns []string, logger *slog.Logger) *fileSD {
	return &fileSD{patterns: patterns, logger: logger, files: map[string]fileSDFile{}}
}

// read rereads the files and reports whether any target group changed, and
// the groups of all files by source.
func (sd *fileSD) read() (map[string]*targetgroup.Group, bool) {
	var paths []string
	for _, p := range sd.patterns {
		matches, err := filepath.Glob(p) // the pattern is validated: no error
		if err != nil {
			sd.logger.Error("file_sd: expand glob", "glob", p, "err", err)
		}
		paths = append(paths, matches...)
	}
	changed := false
	next := make(map[string]fileSDFile, len(paths))
	for _, path := range paths {
		if _, dup := next[path]; dup {
			continue
		}
		prev, known := sd.files[path]
		b, err := os.ReadFile(path)
		if err != nil {
			sd.logger.Warn("file_sd: read file; keeping its previous targets", "file", path, "err", err)
			if known {
				next[path] = prev
			}
			continue
		}
		if known && bytes.Equal(b, prev.content) {
			next[path] = prev
			continue
		}
		groups, err := parseFileSD(path, b, sd.logger)
		if err != nil {
			sd.logger.Warn("file_sd: keeping the previous targets of an invalid file", "file", path, "err", err)
			if known {
				next[path] = prev
			}
			continue
		}
		next[path] = fileSDFile{content: b, groups: groups}
		changed = true
	}
	if len(next) != len(sd.files) {
		changed = true // a file vanished (a new one set changed above)
	}
	sd.files = next
	all := make(map[string]*targetgroup.Group)
	for _, f := range next {
		for _, g := range f.groups {
			all[g.Source] = g
		}
	}
	return all, changed
}

// parseFileSD decodes a file_sd file by its extension, as file_sd does.
func parseFileSD(path string, b []byte, logger *slog.Logger) ([]*targetgroup.Group, error) {
	var groups []*targetgroup.Group
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		if err := json.Unmarshal(b, &groups); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
	default:
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&groups); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
	}
	out := make([]*targetgroup.Group, 0, len(groups))
	for i, g := range groups {
		if g == nil {
			return nil, fmt.Errorf("parse %s: group %d is empty", path, i)
		}
		g.Source = path + ":" + strconv.Itoa(i)
		if fg := fileGroup(g, logger); len(fg.Targets) > 0 {
			out = append(out, fg)
		}
	}
	return out, nil
}

// fileGroup gives every target of a file_sd group a `host` label: the
// target's own, else the group's, else the hostname part of its address
// (for `kvm-1.example:9301` the host is `kvm-1.example`), so that every
// series of the agent job carries one, as the rules and the remediation
// engine expect. Targets whose address is not host:port are dropped with a
// warning: the scrape manager would scrape them on a guessed port.
func fileGroup(g *targetgroup.Group, logger *slog.Logger) *targetgroup.Group {
	out := &targetgroup.Group{Source: g.Source, Labels: g.Labels.Clone()}
	out.Labels[model.LabelName(model.MetaLabelPrefix+"filepath")] = model.LabelValue(strings.SplitN(g.Source, ":", 2)[0])
	for _, t := range g.Targets {
		addr := string(t[model.AddressLabel])
		hostname, _, err := net.SplitHostPort(addr)
		if err != nil || hostname == "" {
			logger.Warn("file_sd: target dropped: address is not host:port", "source", g.Source, "address", addr)
			continue
		}
		host := t[HostLabel]
		if host == "" {
			host = g.Labels[HostLabel]
		}
		if host == "" {
			host = model.LabelValue(hostname)
		}
		lt := t.Clone()
		lt[HostLabel] = host
		out.Targets = append(out.Targets, lt)
	}
	return out
}

// runFileSD rereads the files every interval until Stop, handing changes
// to the scrape manager.
func (m *Monitor) runFileSD(sd *fileSD, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-tick.C:
		}
		if groups, changed := sd.read(); changed {
			m.setFileTargets(groups)
		}
	}
}

// setFileTargets hands the merged target set to the scrape manager. It does
// not wait for the manager to take the targets up: nobody waits on a file.
func (m *Monitor) setFileTargets(groups map[string]*targetgroup.Group) {
	m.targetsMu.Lock()
	defer m.targetsMu.Unlock()
	if m.scrapeStopped {
		return
	}
	m.fileGroups = groups
	m.sendTargetsLocked()
}
