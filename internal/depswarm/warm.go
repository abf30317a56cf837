package depswarm

import (
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/prometheus/common/model"
	_ "github.com/prometheus/exporter-toolkit/web"
	_ "github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery"
	_ "github.com/prometheus/prometheus/discovery/targetgroup"
	_ "github.com/prometheus/prometheus/model/labels"
	_ "github.com/prometheus/prometheus/notifier"
	_ "github.com/prometheus/prometheus/promql"
	_ "github.com/prometheus/prometheus/rules"
	_ "github.com/prometheus/prometheus/scrape"
	_ "github.com/prometheus/prometheus/storage"
	_ "github.com/prometheus/prometheus/tsdb"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "gopkg.in/yaml.v3"
	_ "libvirt.org/go/libvirt"
	_ "libvirt.org/go/libvirtxml"
)
