package bmc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"caretaker/internal/secret"
	"caretaker/internal/yamlfile"
)

// PowerState is a host's power as its BMC reports it.
type PowerState int

const (
	PowerUnknown PowerState = iota
	PowerOn
	PowerOff
)

func (s PowerState) String() string {
	switch s {
	case PowerOn:
		return "on"
	case PowerOff:
		return "off"
	default:
		return "unknown"
	}
}

// Controller is what the provisioner needs of a host's BMC.
type Controller interface {
	PowerStatus(ctx context.Context) (PowerState, error)
	PowerOn(ctx context.Context) error
	PowerOff(ctx context.Context) error
	// PowerCycle powers a running host off and on again; a host that is
	// off is powered on, since many BMCs refuse a cycle of a host that is
	// off and the caller wants it running either way.
	PowerCycle(ctx context.Context) error
	// SetPXEBootOnce makes the next boot, and only the next, boot from PXE.
	SetPXEBootOnce(ctx context.Context) error
}

// ErrNoAnswer is wrapped by the error of an operation whose BMC did not
// answer (timeout, connection refused) in every attempt.
var ErrNoAnswer = errors.New("BMC did not answer")

const (
	TypeIPMI    = "ipmi"
	TypeRedfish = "redfish"

	// DefaultTimeout bounds one attempt when Config.Timeout is zero.
	DefaultTimeout = 10 * time.Second
	// MaxRetries caps Config.Retries: beyond it a dead BMC only delays the
	// caller.
	MaxRetries = 10

	defaultIPMIPort = 623
)

// retryDelay is the pause before the second attempt, doubled for each
// further one, so a briefly overloaded BMC gets room to recover. The
// package's tests shorten it in TestMain.
var retryDelay = 250 * time.Millisecond

// Config is one host's BMC, the `bmc:` block of the inventory.
type Config struct {
	// Type is "ipmi" (IPMI v2.0 over LAN, lanplus) or "redfish".
	Type string `yaml:"type"`
	// Address is host[:port] for IPMI (port 623 by default) and an https
	// URL (or host[:port], taken as https) for Redfish.
	Address  string `yaml:"address"`
	Username string `yaml:"username"`
	// PasswordFile holds the password; one trailing newline is ignored.
	// It names a file inside SecretsDir: a file name or a relative path
	// without "..", never an absolute path, and no symbolic link in it may
	// lead out of SecretsDir (see CheckPasswordFile). So no one who may add
	// a host can have any other file of the server sent to a BMC.
	PasswordFile string `yaml:"password_file"`
	// SecretsDir is the server's BMC secrets directory
	// (provisioner.bmc.secrets_dir), set by the provisioner, never by the
	// inventory.
	SecretsDir string `yaml:"-"`
	// Insecure skips TLS certificate verification (Redfish only), for
	// BMCs with self-signed certificates.
	Insecure bool `yaml:"insecure"`
	// SystemID picks the Redfish ComputerSystem by its Id; empty takes the
	// first member of /redfish/v1/Systems.
	SystemID string `yaml:"system_id"`
	// Timeout bounds one attempt of an operation (zero: DefaultTimeout).
	Timeout time.Duration `yaml:"timeout"`
	// Retries is the number of further attempts after a failed one.
	Retries int `yaml:"retries"`
}

// Validate reports every field that cannot work, by its YAML name.
func (c Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, yamlfile.Errorf(path, format, args...))
	}
	switch c.Type {
	case TypeIPMI:
		if _, _, err := ipmiHostPort(c.Address); err != nil {
			add("address", "%v", err)
		}
		if c.Insecure {
			add("insecure", "applies to redfish only")
		}
		if c.SystemID != "" {
			add("system_id", "applies to redfish only")
		}
		if len(c.Username) > 16 {
			add("username", "IPMI user names have at most 16 bytes, got %d", len(c.Username))
		}
	case TypeRedfish:
		if _, err := redfishBase(c.Address); err != nil {
			add("address", "%v", err)
		}
		if strings.Contains(c.SystemID, "/") {
			add("system_id", "%q is an Id, not a path", c.SystemID)
		}
	case "":
		add("type", "must be %q or %q", TypeIPMI, TypeRedfish)
	default:
		add("type", "%q is neither %q nor %q", c.Type, TypeIPMI, TypeRedfish)
	}
	if c.Username == "" {
		add("username", "must not be empty")
	}
	if err := CheckPasswordFile(c.PasswordFile); err != nil {
		add("password_file", "%v", err)
	}
	if c.Timeout < 0 {
		add("timeout", "must not be negative, got %s", c.Timeout)
	}
	if c.Retries < 0 || c.Retries > MaxRetries {
		add("retries", "must be within [0, %d], got %d", MaxRetries, c.Retries)
	}
	return errors.Join(errs...)
}

// New validates cfg, reads the password and returns the Controller for
// cfg.Type. It does not contact the BMC.
func New(cfg Config, logger *slog.Logger) (Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bmc config: %w", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	password, err := readPassword(cfg.SecretsDir, cfg.PasswordFile)
	if err != nil {
		return nil, err
	}
	logger = logger.With("bmc", cfg.Address, "bmc_type", cfg.Type)
	switch cfg.Type {
	case TypeIPMI:
		return newIPMI(cfg, password, logger)
	default:
		return newRedfish(cfg, password, logger)
	}
}

// PasswordFileRule is what CheckPasswordFile enforces, in its errors and
// the API's.
const PasswordFileRule = `password_file names a file inside the BMC secrets directory (provisioner.bmc.secrets_dir): a file name or a relative path without "..", not an absolute path`

// CheckPasswordFile checks a password_file by its form alone: not empty,
// relative, no ".." element. Where it leads (a symbolic link out of the
// secrets directory) is checked when the password is read.
func CheckPasswordFile(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case filepath.IsAbs(name) || slices.Contains(strings.Split(filepath.ToSlash(name), "/"), "..") || !filepath.IsLocal(name):
		return fmt.Errorf("%q: %s", name, PasswordFileRule)
	}
	return nil
}

// maxPasswordFile bounds what is read of a password file.
const maxPasswordFile = 64 << 10

// readPassword returns the content of the file name inside dir without
// one trailing newline. It opens the file through an os.Root of dir, so a
// symbolic link that leads out of dir is refused. A file group or others
// may read is refused (secret.CheckMode), and so is anything but a regular
// file. Its errors name the file, never the content.
func readPassword(dir, name string) (string, error) {
	if err := CheckPasswordFile(name); err != nil {
		return "", fmt.Errorf("read BMC password: password_file %w", err)
	}
	if dir == "" {
		return "", errors.New("read BMC password: no BMC secrets directory (provisioner.bmc.secrets_dir)")
	}
	path := filepath.Join(dir, name)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("read BMC password: secrets directory: %w", err)
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			err = pe.Err
		}
		return "", fmt.Errorf("read BMC password: open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("read BMC password: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("read BMC password: %s is not a regular file", path)
	}
	if err := secret.CheckMode(path, fi.Mode()); err != nil {
		return "", fmt.Errorf("read BMC password: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFile))
	if err != nil {
		return "", fmt.Errorf("read BMC password: %s: %w", path, err)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("read BMC password: %s is empty", path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("read BMC password: %s has more than one line", path)
	}
	return s, nil
}

// ipmiHostPort splits an IPMI address, defaulting the port to 623.
func ipmiHostPort(addr string) (string, int, error) {
	if addr == "" {
		return "", 0, errors.New("must not be empty")
	}
	if strings.Contains(addr, "://") {
		return "", 0, fmt.Errorf("%q: IPMI takes host[:port], not a URL", addr)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		// A bare host or IPv6 address has no port.
		if strings.Count(addr, ":") == 1 {
			return "", 0, fmt.Errorf("%q: %v", addr, err)
		}
		return strings.Trim(addr, "[]"), defaultIPMIPort, nil
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q is not within [1, 65535]", addr, portStr)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%q: no host", addr)
	}
	return host, port, nil
}

// redfishBase turns a Redfish address into the service's base URL.
func redfishBase(addr string) (*url.URL, error) {
	if addr == "" {
		return nil, errors.New("must not be empty")
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %v", addr, err)
	}
	switch {
	case u.Scheme != "https":
		// Basic auth over plain HTTP would hand the password to the network.
		return nil, fmt.Errorf("%q: scheme must be https", addr)
	case u.Host == "":
		return nil, fmt.Errorf("%q: no host", addr)
	case u.User != nil:
		return nil, fmt.Errorf("%q: credentials belong in username and password_file", u.Redacted())
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return nil, fmt.Errorf("%q: give the BMC's base URL, without path or query", addr)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// permanentError marks a failure that another attempt would repeat
// (refused credentials, a 4xx answer).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// retry runs attempt up to 1+retries times, each bounded by timeout,
// until it succeeds, fails permanently or ctx ends.
func retry(ctx context.Context, log *slog.Logger, op string, timeout time.Duration, retries int, attempt func(ctx context.Context) error) error {
	delay := retryDelay
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := attempt(actx)
		expired := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		switch {
		case expired || timedOut(err):
			err = fmt.Errorf("%w within %s: %w", ErrNoAnswer, timeout, err)
		case refused(err):
			err = fmt.Errorf("%w: %w", ErrNoAnswer, err)
		}
		if n > 1 || retries > 0 {
			err = fmt.Errorf("attempt %d of %d: %w", n, retries+1, err)
		}
		var perm permanentError
		if errors.As(err, &perm) || n > retries || ctx.Err() != nil {
			return err
		}
		log.Debug("BMC operation failed, retrying", "op", op, "attempt", n, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retry abandoned: %w)", err, ctx.Err())
		case <-t.C:
		}
		delay *= 2
	}
}

// timedOut reports whether err is a wait for an answer that ran out.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// refused reports whether the network said no BMC is there to answer.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH)
}
