package agent

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/httpjson"
	"caretaker/internal/libvirtconn"
)

// workTimeout is the least time an action's work in libvirt (starting a
// domain, making or deleting a node's volumes and domain) is given: more
// than an answer (--libvirt.timeout), since the work itself takes libvirt
// seconds (QEMU's start, capability probes). The action's look-ups before
// it are bounded by --libvirt.timeout, so that a frozen libvirtd is
// answered 503 at once.
const workTimeout = time.Minute

// workBound is how long an action's work in libvirt may take.
func (a *Agent) workBound() time.Duration {
	return max(a.cfg.LibvirtTimeout, workTimeout)
}

// withLibvirt runs f with the libvirt connection, bounded by d (0: the
// libvirt timeout) through libvirtconn's Call under the key what: a call
// left hanging in libvirt is not started again for the same what until it
// returns. f answers into a buffer that is copied to w once it returned in
// time; when libvirt did not answer in time, w gets 503 and why, and when
// the connection could not be opened, failCode and libvirt's message. It
// returns what f returned, false when f did not run or return in time:
// whether the caller goes on (nothing answered yet).
func (a *Agent) withLibvirt(w http.ResponseWriter, ctx context.Context, what string, d time.Duration, failCode int,
	f func(w http.ResponseWriter, conn *libvirt.Libvirt) bool) bool {
	if d == 0 {
		d = a.cfg.LibvirtTimeout
	}
	buf := &bufferedResponse{header: http.Header{}}
	var goOn bool
	err := a.conn.CallWithin(ctx, what, d, func(conn *libvirt.Libvirt) error {
		goOn = f(buf, conn)
		return nil
	})
	switch {
	case errors.Is(err, libvirtconn.ErrTimeout), errors.Is(err, libvirtconn.ErrBusy),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		a.logger.Warn("libvirt did not answer", "action", what, "err", err)
		httpjson.Compact.Error(w, http.StatusServiceUnavailable, err.Error())
		return false
	case err != nil:
		httpjson.Compact.Error(w, failCode, libvirtMessage(err))
		return false
	}
	buf.copyTo(w)
	return goOn
}

// bufferedResponse keeps an answer until it is known to be the one to send.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}

// copyTo sends the answer kept, if any, to w.
func (b *bufferedResponse) copyTo(w http.ResponseWriter) {
	if b.code == 0 {
		return
	}
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(b.code)
	_, _ = w.Write(b.body.Bytes())
}
