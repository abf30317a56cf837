// Package dashboards holds caretaker's Grafana dashboards, one JSON file per
// dashboard (fleet, host, guests, overlays, remediation). Grafana loads them
// from disk through deploy/grafana/dashboards/caretaker.yml; the package's
// tests check that every query parses, names only exported metrics and,
// against real agents, returns data.
package dashboards

import "embed"

// Files are the dashboards' JSON files, at the root of the FS.
//
//go:embed *.json
var Files embed.FS
