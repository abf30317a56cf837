package labbmc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// DefaultBootTimeout bounds a Firmware's boot when Firmware.Timeout is
// zero.
const DefaultBootTimeout = 2 * time.Minute

// Firmware is what one host does when it is powered on with boot device
// pxe, as iPXE does once DHCP handed it the server's boot URL: it chains
// BaseURL/pxe/boot.ipxe, the script the server serves to every host,
// which chains the host's attempt script, and runs the iPXE commands a
// lab profile uses: chain, imgfetch, kernel and initrd fetch their URL
// (GET, once each, no retry: a callback is called once), echo is
// ignored, boot starts the kernel loaded and ends the boot. Everything
// else is an error (see parseScript).
type Firmware struct {
	// BaseURL is the server's PXE base URL (provisioner.pxe.base_url).
	BaseURL string
	// MAC is the host's PXE MAC (its inventory macs[0]), for ${net0/mac}.
	MAC string
	// UUID is the host's SMBIOS UUID for ${uuid}; empty expands to
	// nothing, as iPXE does with an unset setting.
	UUID   string
	Client *http.Client
	// Timeout bounds the whole boot; default DefaultBootTimeout.
	Timeout time.Duration
}

// Fetch is one image the firmware fetched.
type Fetch struct {
	Command string // chain, imgfetch, kernel or initrd
	// URL is the URL fetched, its token query parameter (an attempt's
	// credential) replaced by REDACTED.
	URL    string
	Status int   // HTTP status; 0 when there was no answer
	Bytes  int64 // bytes of the body read
}

// Report is what a boot fetched, for the lab's log.
type Report struct {
	Fetched []Fetch
	// Booted is the (redacted) URL of the image boot or chain started;
	// empty when the scripts ended without starting one.
	Booted string
}

// String is the report, one fetch a line.
func (r Report) String() string {
	var b strings.Builder
	for _, f := range r.Fetched {
		fmt.Fprintf(&b, "%s %s → %d, %d bytes\n", f.Command, f.URL, f.Status, f.Bytes)
	}
	if r.Booted != "" {
		fmt.Fprintf(&b, "booted %s\n", r.Booted)
	}
	return b.String()
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Boot boots the host once. Its Report holds what was fetched, also when
// Boot fails partway; its errors never carry a token.
func (f Firmware) Boot(ctx context.Context) (Report, error) {
	b := &booting{f: f}
	err := b.boot(ctx)
	if err != nil {
		err = fmt.Errorf("PXE boot of %s: %w", f.MAC, err)
	}
	return b.rep, err
}

type booting struct {
	f        Firmware
	mac      net.HardwareAddr
	rep      Report
	commands int
	kernel   *url.URL // the kernel loaded, for boot
}

func (b *booting) boot(ctx context.Context) error {
	base, err := url.Parse(b.f.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return fmt.Errorf("base URL %q: want http(s)://host[:port][/path]", b.f.BaseURL)
	}
	if b.mac, err = net.ParseMAC(b.f.MAC); err != nil || len(b.mac) != 6 {
		return fmt.Errorf("MAC %q: want six hex bytes such as 52:54:00:aa:bb:01", b.f.MAC)
	}
	if b.f.UUID != "" && !uuidRE.MatchString(b.f.UUID) {
		return fmt.Errorf("UUID %q: want the lower case 8-4-4-4-12 hex form", b.f.UUID)
	}
	if b.f.Client == nil {
		return errors.New("no HTTP client")
	}
	timeout := b.f.Timeout
	if timeout <= 0 {
		timeout = DefaultBootTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// What DHCP hands iPXE: the chain script's URL, which iPXE chains.
	_, err = b.chain(ctx, base.JoinPath("pxe", "boot.ipxe"), 1)
	return err
}

// chain fetches u: a script is run, any other image is booted.
func (b *booting) chain(ctx context.Context, u *url.URL, depth int) (booted bool, err error) {
	if depth > maxChainDepth {
		return false, fmt.Errorf("chain %s: more than %d scripts deep", redact(u), maxChainDepth)
	}
	script, err := b.fetch(ctx, cmdChain, u)
	if err != nil {
		return false, err
	}
	if script == nil {
		b.rep.Booted = redact(u)
		return true, nil
	}
	return b.run(ctx, u, script, depth)
}

// run runs script, fetched from base.
func (b *booting) run(ctx context.Context, base *url.URL, script []byte, depth int) (booted bool, err error) {
	cmds, err := parseScript(script)
	if err != nil {
		return false, fmt.Errorf("script %s: %w", redact(base), err)
	}
	for _, c := range cmds {
		b.commands++
		if b.commands > maxCommands {
			return false, fmt.Errorf("script %s: line %d: more than %d commands in all", redact(base), c.Line, maxCommands)
		}
		switch c.Name {
		case cmdEcho:
			continue
		case cmdBoot:
			if b.kernel == nil {
				return false, fmt.Errorf("script %s: line %d: boot with no kernel loaded", redact(base), c.Line)
			}
			b.rep.Booted = redact(b.kernel)
			return true, nil
		}
		u, err := b.resolve(base, c.URL)
		if err != nil {
			return false, fmt.Errorf("script %s: line %d: %s: %w", redact(base), c.Line, c.Name, err)
		}
		switch c.Name {
		case cmdChain:
			if booted, err := b.chain(ctx, u, depth+1); err != nil || booted {
				return booted, err
			}
		case cmdKernel:
			if _, err := b.fetch(ctx, c.Name, u); err != nil {
				return false, err
			}
			b.kernel = u
		default: // imgfetch, initrd
			if _, err := b.fetch(ctx, c.Name, u); err != nil {
				return false, err
			}
		}
	}
	return false, nil
}

// resolve expands the settings in ref and resolves it against base, as
// iPXE resolves a relative URI against the script's.
func (b *booting) resolve(base *url.URL, ref string) (*url.URL, error) {
	s, err := expand(ref, b.mac, b.f.UUID)
	if err != nil {
		return nil, err
	}
	r, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("URL %q: %w", redactString(truncate(s)), withoutURL(err))
	}
	u := base.ResolveReference(r)
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("URL %q: only http(s) URLs are fetched", redact(u))
	}
	return u, nil
}

// fetch GETs u for command name and records it. A body that is an iPXE
// script is returned (at most maxScript bytes); any other body (at most
// maxImage bytes) is read and dropped, and nil returned.
func (b *booting) fetch(ctx context.Context, name string, u *url.URL) ([]byte, error) {
	shown := redact(u)
	b.rep.Fetched = append(b.rep.Fetched, Fetch{Command: name, URL: shown})
	rec := &b.rep.Fetched[len(b.rep.Fetched)-1]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, shown, withoutURL(err))
	}
	resp, err := b.f.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, shown, withoutURL(err))
	}
	defer resp.Body.Close()
	rec.Status = resp.StatusCode
	head, err := io.ReadAll(io.LimitReader(resp.Body, maxScript+1))
	rec.Bytes = int64(len(head))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read: %w", name, shown, err)
	}
	if resp.StatusCode/100 != 2 {
		msg, _, _ := bytes.Cut(head, []byte("\n"))
		return nil, fmt.Errorf("%s %s: HTTP %d: %q", name, shown, resp.StatusCode, truncate(string(msg)))
	}
	if isScript(head) {
		if len(head) > maxScript {
			return nil, fmt.Errorf("%s %s: script larger than %d bytes", name, shown, maxScript)
		}
		return head, nil
	}
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxImage+1-int64(len(head))))
	rec.Bytes += n
	if err != nil {
		return nil, fmt.Errorf("%s %s: read: %w", name, shown, err)
	}
	if rec.Bytes > maxImage {
		return nil, fmt.Errorf("%s %s: image larger than %d bytes", name, shown, maxImage)
	}
	return nil, nil
}

// withoutURL drops the *url.Error around err: it names the URL, token and
// all.
func withoutURL(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

var tokenRE = regexp.MustCompile(`([?&;]token=)[^&#;]*`)

// redact returns u with its token query parameter replaced by REDACTED:
// an attempt's token is its credential.
func redact(u *url.URL) string { return redactString(u.String()) }

func redactString(s string) string { return tokenRE.ReplaceAllString(s, "${1}REDACTED") }
