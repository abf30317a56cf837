package audit

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"
)

// Config says where and how remediation records are pushed to Loki.
// Zero values take the defaults below; negative ones are errors.
type Config struct {
	// URL is Loki's push endpoint, e.g. http://loki:3100/loki/api/v1/push.
	URL string
	// TenantID is sent as X-Scope-OrgID for a multi-tenant Loki; optional.
	TenantID string
	// BearerToken is sent as "Authorization: Bearer"; optional. The caller
	// reads it from a file; it is never logged.
	BearerToken string
	// BatchSize is how many records one push carries at most.
	BatchSize int
	// BatchWait is how long the first record of a batch waits for others
	// before the batch is pushed anyway.
	BatchWait time.Duration
	// MaxBuffer is how many records wait to be pushed; more are dropped
	// (and counted) so the engine never waits on Loki.
	MaxBuffer int
	// Timeout bounds one push request.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries of a batch,
	// which doubles from MinBackoff on each retry.
	MinBackoff, MaxBackoff time.Duration
	// MaxRetries is how many times a batch is retried after its first try
	// (0 takes the default: a batch is always retried at least once).
	MaxRetries int
	// ExternalLabels are added to every stream (e.g. cluster="dc1"). They
	// cannot override the labels this package sets.
	ExternalLabels map[string]string
}

// The defaults follow promtail's where they fit; MaxBackoff is shorter
// because while a batch is retried new records wait in the buffer.
const (
	DefaultBatchSize  = 100
	DefaultBatchWait  = time.Second
	DefaultMaxBuffer  = 10000
	DefaultTimeout    = 10 * time.Second
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	DefaultMaxRetries = 10
)

// labelName is Loki's (and Prometheus') label name syntax.
var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// withDefaults returns cfg with every zero field set to its default.
func (cfg Config) withDefaults() Config {
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchWait == 0 {
		cfg.BatchWait = DefaultBatchWait
	}
	if cfg.MaxBuffer == 0 {
		cfg.MaxBuffer = DefaultMaxBuffer
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	return cfg
}

// validate checks a config that has had its defaults applied. Each error
// names the field.
func (cfg Config) validate() error {
	if cfg.URL == "" {
		return errors.New("audit config: URL: required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // ue quotes the URL, password and all
		}
		return fmt.Errorf("audit config: URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("audit config: URL %q: must be an http or https URL with a host", u.Redacted())
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"BatchSize", int64(cfg.BatchSize)},
		{"BatchWait", int64(cfg.BatchWait)},
		{"MaxBuffer", int64(cfg.MaxBuffer)},
		{"Timeout", int64(cfg.Timeout)},
		{"MinBackoff", int64(cfg.MinBackoff)},
		{"MaxBackoff", int64(cfg.MaxBackoff)},
		{"MaxRetries", int64(cfg.MaxRetries)},
	} {
		if f.v < 0 {
			return fmt.Errorf("audit config: %s: must not be negative", f.name)
		}
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return fmt.Errorf("audit config: MaxBackoff %s: less than MinBackoff %s", cfg.MaxBackoff, cfg.MinBackoff)
	}
	for name, value := range cfg.ExternalLabels {
		if !labelName.MatchString(name) {
			return fmt.Errorf("audit config: ExternalLabels[%q]: not a valid label name", name)
		}
		if reserved(name) {
			return fmt.Errorf("audit config: ExternalLabels[%q]: set by caretaker, cannot be overridden", name)
		}
		if value == "" {
			return fmt.Errorf("audit config: ExternalLabels[%q]: empty value", name)
		}
	}
	return nil
}
