package audit

import (
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	got := Config{URL: "http://loki:3100/loki/api/v1/push"}.withDefaults()
	want := Config{
		URL:        "http://loki:3100/loki/api/v1/push",
		BatchSize:  DefaultBatchSize,
		BatchWait:  DefaultBatchWait,
		MaxBuffer:  DefaultMaxBuffer,
		Timeout:    DefaultTimeout,
		MinBackoff: DefaultMinBackoff,
		MaxBackoff: DefaultMaxBackoff,
		MaxRetries: DefaultMaxRetries,
	}
	if got.URL != want.URL || got.BatchSize != want.BatchSize || got.BatchWait != want.BatchWait ||
		got.MaxBuffer != want.MaxBuffer || got.Timeout != want.Timeout || got.MinBackoff != want.MinBackoff ||
		got.MaxBackoff != want.MaxBackoff || got.MaxRetries != want.MaxRetries {
		t.Errorf("withDefaults = %+v, want %+v", got, want)
	}
	if err := got.validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	// A MinBackoff above the default maximum raises the maximum with it.
	if got := (Config{MinBackoff: time.Minute}).withDefaults(); got.MaxBackoff != time.Minute {
		t.Errorf("MaxBackoff = %s, want 1m", got.MaxBackoff)
	}
}

func TestConfigValidate(t *testing.T) {
	const u = "http://loki:3100/loki/api/v1/push"
	tests := []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"minimal", Config{URL: u}, ""},
		{"https with labels", Config{URL: "https://logs.example/loki/api/v1/push", TenantID: "ops", ExternalLabels: map[string]string{"cluster": "dc1"}}, ""},
		{"no url", Config{}, "audit config: URL: required"},
		{"bad scheme", Config{URL: "ftp://loki/push"}, `audit config: URL "ftp://loki/push": must be an http or https URL with a host`},
		{"no host", Config{URL: "http:///push"}, `audit config: URL "http:///push": must be an http or https URL with a host`},
		{"unparsable", Config{URL: "http://u:secret@loki:port/"}, `audit config: URL: invalid port ":port" after host`},
		{"password redacted", Config{URL: "ftp://u:secret@loki/push"}, `audit config: URL "ftp://u:xxxxx@loki/push": must be an http or https URL with a host`},
		{"batch size", Config{URL: u, BatchSize: -1}, "audit config: BatchSize: must not be negative"},
		{"batch wait", Config{URL: u, BatchWait: -time.Second}, "audit config: BatchWait: must not be negative"},
		{"max buffer", Config{URL: u, MaxBuffer: -1}, "audit config: MaxBuffer: must not be negative"},
		{"timeout", Config{URL: u, Timeout: -1}, "audit config: Timeout: must not be negative"},
		{"min backoff", Config{URL: u, MinBackoff: -1}, "audit config: MinBackoff: must not be negative"},
		{"max retries", Config{URL: u, MaxRetries: -1}, "audit config: MaxRetries: must not be negative"},
		{"backoff order", Config{URL: u, MinBackoff: 2 * time.Second, MaxBackoff: time.Second}, "audit config: MaxBackoff 1s: less than MinBackoff 2s"},
		{"label name", Config{URL: u, ExternalLabels: map[string]string{"data-center": "dc1"}}, `audit config: ExternalLabels["data-center"]: not a valid label name`},
		{"reserved label", Config{URL: u, ExternalLabels: map[string]string{"host": "x"}}, `audit config: ExternalLabels["host"]: set by caretaker, cannot be overridden`},
		{"empty label value", Config{URL: u, ExternalLabels: map[string]string{"cluster": ""}}, `audit config: ExternalLabels["cluster"]: empty value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.withDefaults().validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("validate: %v", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Fatalf("validate = %v, want %q", err, tt.want)
			}
		})
	}
}
