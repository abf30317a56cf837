package monitoring

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/template"
)

// AlertAs is the alert that the alerting rule named name would raise, at
// ts, for a sample of its expression with the given labels and value: the
// sample's labels without the metric name, the rule's labels (expanded),
// alertname, and the rule's annotations expanded — as the rules manager
// builds it, so that an alert raised outside the rules (from a libvirt
// event) has the rule's label set, and so its fingerprint. The alert is
// firing since ts.
func (m *Monitor) AlertAs(ctx context.Context, name string, sample map[string]string, value float64, ts time.Time) (Alert, error) {
	for _, r := range m.rules.AlertingRules() {
		if r.Name() != name {
			continue
		}
		l := make(map[string]string, len(sample))
		for k, v := range sample {
			if k != labels.MetricName {
				l[k] = v
			}
		}
		smpl := promql.Sample{Metric: labels.FromMap(l), F: value, T: timestamp.FromTime(ts)}
		data := template.AlertTemplateData(l, nil, "", smpl)
		defs := "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"
		query := func(ctx context.Context, q string, at time.Time) (promql.Vector, error) { return m.Query(ctx, q, at) }
		expand := func(text string) string {
			out, err := template.NewTemplateExpander(ctx, defs+text, "__alert_"+name, data,
				model.Time(timestamp.FromTime(ts)), query, &url.URL{}, nil).Expand()
			if err != nil {
				return fmt.Sprintf("<error expanding template: %s>", err)
			}
			return out
		}
		out := make(map[string]string, len(l)+r.Labels().Len()+1)
		for k, v := range l {
			out[k] = v
		}
		r.Labels().Range(func(lb labels.Label) { out[lb.Name] = expand(lb.Value) })
		out[labels.AlertName] = name
		ann := map[string]string{}
		r.Annotations().Range(func(lb labels.Label) { ann[lb.Name] = expand(lb.Value) })
		ls := make(model.LabelSet, len(out))
		for k, v := range out {
			ls[model.LabelName(k)] = model.LabelValue(v)
		}
		return Alert{Name: name, Labels: out, Annotations: ann, State: "firing", Value: value,
			ActiveAt: ts, FiredAt: ts, Fingerprint: ls.Fingerprint().String()}, nil
	}
	return Alert{}, fmt.Errorf("no alerting rule %s is loaded", name)
}
