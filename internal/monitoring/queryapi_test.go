package monitoring

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"caretaker/internal/promapi"
)

// heavy runs for seconds, checking its context at each of its 2.6M steps.
const heavy = `count_over_time(vector(1)[30d:1s])`

// endless reads the storage, whose Select then waits for the query's
// context to end: a query that runs until it is cancelled, whatever the
// machine's speed.
const endless = `up`

// blockingQueryable tells when a query reads the storage and makes its
// Select wait for the query's context.
type blockingQueryable struct {
	storage.Queryable
	started chan struct{}
}

func (q blockingQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	inner, err := q.Queryable.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return blockingQuerier{inner, q.started}, nil
}

type blockingQuerier struct {
	storage.Querier
	started chan struct{}
}

func (q blockingQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	select {
	case q.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return storage.ErrSeriesSet(ctx.Err())
}

// queryServer serves the query API over m as the server does (Guard around
// it) and reports each request's end on done.
type queryServer struct {
	srv     *httptest.Server
	started chan struct{}
	done    chan int // each request's status, once its handler returned
}

func newQueryServer(t *testing.T, m *Monitor, maxConcurrency int) *queryServer {
	t.Helper()
	qs := &queryServer{started: make(chan struct{}, 1), done: make(chan int, 10)}
	api, err := promapi.New(promapi.Options{
		Queryable:      blockingQueryable{m.Queryable(), qs.started},
		Engine:         m.Engine(),
		MaxConcurrency: maxConcurrency,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	guarded := m.Guard(api.Handler())
	qs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		guarded.ServeHTTP(sw, r)
		qs.done <- sw.status
	}))
	t.Cleanup(qs.srv.Close)
	return qs
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// promResponse is the envelope of Prometheus' API.
type promResponse struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
}

// query runs an instant query at a fixed time and returns the status and
// the decoded envelope.
func (qs *queryServer) query(t *testing.T, ctx context.Context, expr string, extra url.Values) (int, promResponse, error) {
	form := url.Values{"query": {expr}, "time": {"1700000000"}}
	for k, v := range extra {
		form[k] = v
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, qs.srv.URL+"/api/v1/query?"+form.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := qs.srv.Client().Do(req)
	if err != nil {
		return 0, promResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, promResponse{}, err
	}
	var pr promResponse
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(body, &pr); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	} else {
		pr.Error = string(body) // Guard's refusals are plain text
	}
	return resp.StatusCode, pr, nil
}

// awaitEnd waits for the next request's handler to return. The limit only
// turns a query that is never cancelled into a failure instead of a hang.
func (qs *queryServer) awaitEnd(t *testing.T, what string) int {
	t.Helper()
	select {
	case status := <-qs.done:
		return status
	case <-time.After(time.Minute):
		t.Fatalf("%s: the query still runs", what)
		return 0
	}
}

func (qs *queryServer) awaitStart(t *testing.T) {
	t.Helper()
	select {
	case <-qs.started:
	case <-time.After(time.Minute):
		t.Fatal("the query never started")
	}
}

func TestQueryTimeout(t *testing.T) {
	t.Parallel()
	m := startMonitor(t, Options{Query: QueryLimits{Timeout: 10 * time.Millisecond}})
	qs := newQueryServer(t, m, 0)
	code, pr, err := qs.query(t, t.Context(), heavy, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus' answer: 503 {"status":"error","errorType":"timeout","error":"query timed out in …"}.
	if code != http.StatusServiceUnavailable || pr.Status != "error" || pr.ErrorType != "timeout" || pr.Error != "query timed out in expression evaluation" {
		t.Errorf("got %d %+v, want 503 timeout", code, pr)
	}
}

func TestQueryMaxSamples(t *testing.T) {
	t.Parallel()
	m := startMonitor(t, Options{Query: QueryLimits{MaxSamples: 1000}})
	qs := newQueryServer(t, m, 0)
	code, pr, err := qs.query(t, t.Context(), `count_over_time(vector(1)[1h:1s])`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusUnprocessableEntity || pr.ErrorType != "execution" ||
		pr.Error != "query processing would load too many samples into memory in query execution" {
		t.Errorf("got %d %+v, want 422 execution: too many samples", code, pr)
	}
	if code, pr, _ := qs.query(t, t.Context(), `count_over_time(vector(1)[5m:1s])`, nil); code != http.StatusOK {
		t.Errorf("a query within the limit: %d %+v", code, pr)
	}
}

// A client that leaves cancels its query, which then ends at once instead
// of running on for its whole timeout.
func TestQueryCancelledWhenClientLeaves(t *testing.T) {
	t.Parallel()
	m := startMonitor(t, Options{})
	qs := newQueryServer(t, m, 0)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, _, err := qs.query(t, ctx, endless, nil)
		errc <- err
	}()
	qs.awaitStart(t)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v, want canceled", err)
	}
	if status := qs.awaitEnd(t, "client left"); status != 499 {
		t.Errorf("status %d, want 499 (client closed the connection)", status)
	}
}

// CancelQueries (the server's shutdown) ends running queries and refuses
// new ones; the Monitor keeps running.
func TestCancelQueries(t *testing.T) {
	t.Parallel()
	m := startMonitor(t, Options{})
	qs := newQueryServer(t, m, 0)
	type result struct {
		code int
		pr   promResponse
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, pr, err := qs.query(t, t.Context(), endless, nil)
		res <- result{code, pr, err}
	}()
	qs.awaitStart(t)
	m.CancelQueries()
	qs.awaitEnd(t, "after CancelQueries")
	if r := <-res; r.err != nil || r.code != 499 || r.pr.ErrorType != "canceled" {
		t.Errorf("running query: %d %+v %v, want 499 canceled", r.code, r.pr, r.err)
	}
	if code, pr, err := qs.query(t, t.Context(), "vector(1)", nil); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("a query after CancelQueries: %d %+v %v, want 503", code, pr, err)
	}
	if _, err := m.Query(t.Context(), "vector(1)", time.Now()); err != nil {
		t.Errorf("the Monitor stopped too: %v", err)
	}
}

// With max_concurrency 1, a second query waits for the first: it times out
// in the queue when its timeout passes first, and runs once the first ends.
func TestQueryMaxConcurrency(t *testing.T) {
	t.Parallel()
	m := startMonitor(t, Options{})
	qs := newQueryServer(t, m, 1)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { _, _, _ = qs.query(t, ctx, endless, nil) })
	qs.awaitStart(t)

	code, pr, err := qs.query(t, t.Context(), "vector(1)", url.Values{"timeout": {"50ms"}})
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusServiceUnavailable || pr.ErrorType != "timeout" || pr.Error != "query timed out in query queue" {
		t.Errorf("second query: %d %+v, want 503 timeout in the query queue", code, pr)
	}
	if status := qs.awaitEnd(t, "queued query"); status != http.StatusServiceUnavailable {
		t.Errorf("queued query's status %d", status)
	}

	waiting := make(chan int, 1)
	go func() {
		code, _, _ := qs.query(t, t.Context(), "vector(1)", nil)
		waiting <- code
	}()
	cancel() // the first query's client leaves; its slot frees
	wg.Wait()
	if code := <-waiting; code != http.StatusOK {
		t.Errorf("the waiting query answered %d, want 200 once the slot freed", code)
	}
}
