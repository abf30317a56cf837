package guestos

import (
	"caretaker/internal/nsrun"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Timeouts of the probes, where the caller's context sets none shorter.
const (
	// PingTimeout bounds Ping when its context has no deadline.
	PingTimeout = 5 * time.Second
	// pingInterval is how often Ping sends an echo request until one
	// is answered.
	pingInterval = 250 * time.Millisecond
	// dialTimeout bounds connecting to a guest's web server.
	dialTimeout = 5 * time.Second
	// requestTimeout bounds one request to a guest, its answer included:
	// the guest's ping of another address takes up to some 3 s.
	requestTimeout = 15 * time.Second
	// maxBody caps what is read of an answer.
	maxBody = 64 << 10
	// httpPort is where the guest's busybox httpd listens.
	httpPort = 80
)

// Ping sends ICMP echo requests to dst from inside the network namespace
// at nsPath, one every 250 ms, until one is answered (nil) or ctx ends (an
// error); a ctx without a deadline is given PingTimeout. So a ctx of a
// minute waits for a booting guest's first answer. It needs root (a raw
// ip4:icmp socket).
func Ping(ctx context.Context, nsPath string, dst netip.Addr) error {
	if !dst.Is4() {
		return fmt.Errorf("ping %s: not an IPv4 address", dst)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, PingTimeout)
		defer cancel()
	}
	conn, err := nsrun.Do(nsPath, func() (*icmp.PacketConn, error) {
		return icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	})
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, nsPath, err)
	}
	defer conn.Close()
	// Closing the socket ends a blocked read when ctx does.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	id := int(binary.BigEndian.Uint16(b[:]))
	replied := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				readErr <- err
				return
			}
			m, err := icmp.ParseMessage(ipv4.ICMPTypeEchoReply.Protocol(), buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			echo, ok := m.Body.(*icmp.Echo)
			if !ok || echo.ID != id {
				continue
			}
			if ip, ok := from.(*net.IPAddr); ok && ip.IP.Equal(dst.AsSlice()) {
				close(replied)
				return
			}
		}
	}()
	tick := time.NewTicker(pingInterval)
	defer tick.Stop()
	var sendErr error
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("caretaker guestos")}}
		wb, err := msg.Marshal(nil)
		if err != nil {
			return fmt.Errorf("ping %s: %w", dst, err)
		}
		// A send may fail while the neighbour is unresolved; the next
		// try may not.
		if _, err := conn.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			sendErr = err
		}
		select {
		case <-replied:
			return nil
		case <-tick.C:
		case <-ctx.Done():
			select {
			case <-replied:
				return nil
			default:
			}
			if sendErr != nil {
				return fmt.Errorf("ping %s from %s: no answer (%w; last send error: %v)", dst, nsPath, ctx.Err(), sendErr)
			}
			return fmt.Errorf("ping %s from %s: no answer: %w", dst, nsPath, ctx.Err())
		case err := <-readErr:
			if ctx.Err() != nil {
				continue // the next round returns ctx's error
			}
			return fmt.Errorf("ping %s from %s: read: %w", dst, nsPath, err)
		}
	}
}

// Client is an HTTP client that connects from inside the network namespace
// at nsPath, for the guests' web servers. Each request is bounded (15 s)
// and uses a connection of its own.
func Client(nsPath string) *http.Client {
	dialer := &net.Dialer{Timeout: dialTimeout}
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nsrun.Do(nsPath, func() (net.Conn, error) {
					return dialer.DialContext(ctx, network, addr)
				})
			},
			// busybox httpd closes each connection after its answer.
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: requestTimeout,
		},
	}
}

// get asks guest for path and returns the answer's status and body.
func get(ctx context.Context, client *http.Client, guest netip.Addr, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	url := "http://" + netip.AddrPortFrom(guest, httpPort).String() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: read answer: %w", url, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}

// AskPing asks guest to ping target: true when target answered, false when
// not, with what the guest's ping printed; an error when the guest could
// not be asked or refused the question.
func AskPing(ctx context.Context, client *http.Client, guest, target netip.Addr) (bool, string, error) {
	if !target.Is4() {
		return false, "", fmt.Errorf("ask %s to ping %s: not an IPv4 address", guest, target)
	}
	status, body, err := get(ctx, client, guest, "/cgi-bin/ping?"+target.String())
	if err != nil {
		return false, "", fmt.Errorf("ask %s to ping %s: %w", guest, target, err)
	}
	switch status {
	case http.StatusOK:
		return true, body, nil
	case http.StatusBadGateway:
		return false, body, nil
	}
	return false, body, fmt.Errorf("ask %s to ping %s: status %d: %s", guest, target, status, body)
}

// Panic asks guest to panic its kernel. It returns once the guest has
// answered, a second before the panic.
func Panic(ctx context.Context, client *http.Client, guest netip.Addr) error {
	status, body, err := get(ctx, client, guest, "/cgi-bin/panic")
	if err != nil {
		return fmt.Errorf("ask %s to panic: %w", guest, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("ask %s to panic: status %d: %s", guest, status, body)
	}
	return nil
}

// Info returns what guest says of itself: its hostname, address,
// interface and uptime, one "key value" a line.
func Info(ctx context.Context, client *http.Client, guest netip.Addr) (string, error) {
	status, body, err := get(ctx, client, guest, "/cgi-bin/info")
	if err != nil {
		return "", fmt.Errorf("ask %s for its info: %w", guest, err)
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("ask %s for its info: status %d: %s", guest, status, body)
	}
	return body, nil
}
