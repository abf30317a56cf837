package intake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"caretaker/remediation"
)

// BenchmarkIntake posts deliveries of 100 alerts each through the handler
// into a real bbolt inbox, and reports the throughput and the 99th
// percentile latency. "new": every alert is new (a commit per delivery and
// one for the ack). "redelivered": Alertmanager's repeat notifications of
// alerts already recorded (a commit refreshing what was seen).
func BenchmarkIntake(b *testing.B) {
	b.Run("new", func(b *testing.B) { benchmarkIntake(b, func(i int) int { return i }) })
	b.Run("redelivered", func(b *testing.B) { benchmarkIntake(b, func(int) int { return 0 }) })
}

func benchmarkIntake(b *testing.B, instance func(i int) int) {
	const perRequest = 100
	in, _ := openInbox(b)
	h := Handler(Options{Inbox: in, Token: testToken, OnAlerts: func(context.Context, []remediation.Alert) {}})

	// Bodies are built before timing.
	body := func(i int) []byte {
		m := Message{Receiver: "caretaker", Status: "firing", Version: Version, GroupKey: "{}:{}"}
		for j := range perRequest {
			m.Alerts = append(m.Alerts, Alert{
				Status:      "firing",
				Labels:      map[string]string{"alertname": "GuestCrashed", "host": fmt.Sprintf("kvm-%d", j), "uuid": fmt.Sprintf("u-%d-%d", i, j)},
				Annotations: map[string]string{"summary": "Guest crashed"},
				StartsAt:    t0.Add(time.Duration(i) * time.Second),
			})
		}
		out, err := json.Marshal(m)
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	bodies := make([][]byte, b.N)
	for i := range bodies {
		if n := instance(i); n == i {
			bodies[i] = body(n)
		} else {
			bodies[i] = bodies[n]
		}
	}
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(bodies[i]))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		began := time.Now()
		h.ServeHTTP(rec, req)
		latencies = append(latencies, time.Since(began))
		if rec.Code != http.StatusOK {
			b.Fatalf("delivery %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(latencies)
	p99 := latencies[min(len(latencies)-1, len(latencies)*99/100)]
	b.ReportMetric(float64(b.N*perRequest)/elapsed.Seconds(), "alerts/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}
