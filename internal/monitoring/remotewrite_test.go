package monitoring

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
)

// TestRemoteWriterStatus checks what a sender does with each answer: 2xx
// done, 4xx final, 429 and 5xx retried (as Alertmanager's notify/util.go).
func TestRemoteWriterStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		statuses []int // answered in turn; the last one repeats
		requests int64
		sent     float64
		failed   float64
	}{
		{"accepted", []int{204}, 1, 2, 0},
		{"bad request is final", []int{400}, 1, 0, 2},
		{"server errors are retried", []int{503, 500, 200}, 3, 2, 0},
		{"too many requests is retried", []int{429, 200}, 2, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			var body prompb.WriteRequest
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := requests.Add(1)
				status := tc.statuses[min(int(n), len(tc.statuses))-1]
				if r.Header.Get("Content-Encoding") != "snappy" || r.Header.Get("X-Prometheus-Remote-Write-Version") != "0.1.0" {
					t.Errorf("request headers = %v", r.Header)
				}
				if status/100 == 2 {
					b, _ := io.ReadAll(r.Body)
					raw, err := snappy.Decode(nil, b)
					if err == nil {
						err = body.Unmarshal(raw)
					}
					if err != nil {
						t.Errorf("decode request body: %v", err)
					}
				}
				w.WriteHeader(status)
			}))
			t.Cleanup(srv.Close)

			reg := newRegistry()
			metrics, err := newRemoteWriteMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			w := newRemoteWriter(RemoteWriteConfig{URL: srv.URL, Name: "t"}, metrics, testLogger(t))
			ls := labels.FromStrings("__name__", "up", "host", "kvm-1")
			w.enqueue([]remoteSample{{labels: ls, t: 1000, v: 1}, {labels: ls, t: 2000, v: 0}})
			w.close()
			w.run(t.Context()) // returns when the closed queue is sent

			if got := requests.Load(); got != tc.requests {
				t.Errorf("requests = %d, want %d", got, tc.requests)
			}
			if got := counterValue(t, reg, "caretaker_remote_write_samples_sent_total", "t"); got != tc.sent {
				t.Errorf("sent = %v, want %v", got, tc.sent)
			}
			if got := counterValue(t, reg, "caretaker_remote_write_samples_failed_total", "t"); got != tc.failed {
				t.Errorf("failed = %v, want %v", got, tc.failed)
			}
			if tc.sent > 0 {
				if len(body.Timeseries) != 1 || len(body.Timeseries[0].Samples) != 2 || body.Timeseries[0].Samples[1].Timestamp != 2000 {
					t.Errorf("request = %+v, want one series with both samples in order", body.Timeseries)
				}
			}
		})
	}
}
