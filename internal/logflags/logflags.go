// Package logflags is the --log.level and --log.format flags of caretaker's
// binaries (promslog's, as the Prometheus exporters have them) and the
// logger they make.
package logflags

import (
	"io"
	"log/slog"

	"github.com/prometheus/common/promslog"
	"github.com/spf13/pflag"
)

// Flags holds the log level and format; the zero value is not usable, New
// makes one.
type Flags struct {
	level  *promslog.Level
	format *promslog.Format
}

// New returns the defaults: level info, format logfmt.
func New() *Flags {
	f := &Flags{level: promslog.NewLevel(), format: promslog.NewFormat()}
	_ = f.format.Set("logfmt")
	return f
}

// Register adds --log.level and --log.format to fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.Var(&flagValue{f.level, "level"}, "log.level", "log level: debug, info, warn or error")
	fs.Var(&flagValue{f.format, "format"}, "log.format", "log format: logfmt or json")
}

// Logger returns a logger writing to w at the flags' level and format.
func (f *Flags) Logger(w io.Writer) *slog.Logger {
	return promslog.New(&promslog.Config{Level: f.level, Format: f.format, Writer: w})
}

// flagValue adapts promslog's flag values to pflag.
type flagValue struct {
	v interface {
		String() string
		Set(string) error
	}
	typ string
}

func (f *flagValue) String() string     { return f.v.String() }
func (f *flagValue) Set(s string) error { return f.v.Set(s) }
func (f *flagValue) Type() string       { return f.typ }

var _ pflag.Value = (*flagValue)(nil)
