package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/agentapi"
	"caretaker/internal/httpjson"
)

// EpochFile is the file of Config.StateDir holding the highest leader
// epoch the agent has seen, in decimal.
const EpochFile = "epoch"

// fence keeps the highest leader epoch (agentapi.EpochHeader) the agent has
// seen and refuses the changes of older leaders: with several servers, one
// leader at a time acts, and one that lost its leadership without knowing
// it (a pause, a partition) must not act after its successor has.
type fence struct {
	logger *slog.Logger
	// path is the file the epoch is kept in across restarts; empty keeps
	// it in memory only.
	path    string
	gauge   prometheus.Gauge
	refused prometheus.Counter

	// mu makes each request's check and record one step, so that two
	// requests never both pass a check against the same, stale highest.
	mu      sync.Mutex
	highest int64
}

// newFence returns a fence that keeps its epoch in stateDir (created if
// missing), starting from the epoch recorded there, or in memory only if
// stateDir is empty. A file that is not an epoch is an error naming it.
func newFence(stateDir string, logger *slog.Logger) (*fence, error) {
	f := &fence{
		logger: logger,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_agent_epoch",
			Help: "Highest leader epoch (Caretaker-Epoch header of the server's actions) this agent has seen; 0 before any. Actions with a lower one are refused.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_agent_fenced_requests_total",
			Help: "Actions refused (409) because their leader epoch was lower than the highest this agent has seen: requests of a server that is no longer the leader.",
		}),
	}
	if stateDir == "" {
		return f, nil
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f.path = filepath.Join(stateDir, EpochFile)
	data, err := os.ReadFile(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("read epoch file: %w", err)
	}
	e, err := parseEpoch(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("epoch file %s is corrupt: %w", f.path, err)
	}
	f.highest = e
	f.gauge.Set(float64(e))
	logger.Info("highest leader epoch read", "epoch", e, "file", f.path)
	return f, nil
}

// parseEpoch parses a leader epoch: a positive decimal integer, digits only.
func parseEpoch(s string) (int64, error) {
	bad := fmt.Errorf("%q is not an epoch: want a positive decimal integer", s)
	if s == "" || len(s) > 19 {
		return 0, bad
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	e, err := strconv.ParseInt(s, 10, 64)
	if err != nil || e <= 0 {
		return 0, bad
	}
	return e, nil
}

// handler checks every request that changes something (all but GET and
// HEAD) before next sees it; it runs after authentication, so only the
// server's epochs count. A request without the header is let through: a
// single, unclustered server sends none, and neither do servers older than
// the header. A malformed header is a 400 naming it; an epoch lower than
// the highest seen a 409 (agentapi.ErrorBody with Fenced), logged and
// counted, with nothing done; a higher one is recorded (on disk first,
// when the agent has a state directory) before the request goes on.
//
// A request let through before a newer leader's first one may still be
// running when that one arrives: the fence orders admissions, not actions.
func (f *fence) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		values := r.Header.Values(agentapi.EpochHeader)
		if len(values) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if len(values) > 1 {
			httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("header %s: %d values, want one", agentapi.EpochHeader, len(values)))
			return
		}
		e, err := parseEpoch(strings.TrimSpace(values[0]))
		if err != nil {
			httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("header %s: %v", agentapi.EpochHeader, err))
			return
		}
		highest, err := f.admit(e)
		switch {
		case err != nil:
			f.logger.Error("record leader epoch", "epoch", e, "err", err)
			httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("record epoch %d: %v", e, err))
		case e < highest:
			f.refused.Inc()
			f.logger.Warn("refused an action of an older leader", "method", r.Method, "path", r.URL.Path,
				"epoch", e, "highest_epoch", highest, "client", r.RemoteAddr)
			httpjson.Compact.Write(w, http.StatusConflict, agentapi.ErrorBody{
				Error:  fmt.Sprintf("epoch %d is older than %d, the highest this agent has seen: a newer leader has taken over", e, highest),
				Fenced: true,
			})
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// admit checks e against the highest epoch seen and records it when it is
// higher, in one step. It returns the highest epoch before e: e is refused
// when it is lower. An error (the file could not be written) records
// nothing: memory and file stay alike.
func (f *fence) admit(e int64) (highest int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e <= f.highest {
		return f.highest, nil
	}
	if err := f.persist(e); err != nil {
		return f.highest, err
	}
	prev := f.highest
	f.highest = e
	f.gauge.Set(float64(e))
	f.logger.Info("new leader epoch", "epoch", e, "previous", prev)
	return prev, nil
}

// persist writes e to the epoch file atomically: a temporary file of the
// same directory, synced, then renamed over it. A crash leaves the old
// epoch or the new one, never a part.
func (f *fence) persist(e int64) (err error) {
	if f.path == "" {
		return nil
	}
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, "."+EpochFile+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(strconv.FormatInt(e, 10) + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return err
	}
	// The rename is durable once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// current returns the highest epoch seen.
func (f *fence) current() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.highest
}
