package promapi

import (
	"encoding/json"
	"math"
	"strconv"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
)

// Prometheus encodes vectors and matrices with hand-written json-iterator
// encoders (web/api/v1/json_codec.go, util/jsonutil) whose number formats
// differ from the MarshalJSON methods in promql: sample values use the
// exponent form below 1e-6 and from 1e21 on, timestamps are written from
// integer milliseconds. This is a port of them onto byte slices.

// resultJSON returns the value of a query result ready for encoding/json.
// Scalars and strings keep promql's MarshalJSON, which Prometheus uses too.
func resultJSON(v parser.Value) any {
	switch v := v.(type) {
	case promql.Vector:
		return vectorJSON(v)
	case promql.Matrix:
		return matrixJSON(v)
	default:
		return v
	}
}

type vectorJSON promql.Vector

// MarshalJSON writes `[sample,sample,...]`; an empty vector is `[]`.
func (v vectorJSON) MarshalJSON() ([]byte, error) {
	b := []byte{'['}
	for i, s := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSample(b, s)
	}
	return append(b, ']'), nil
}

type matrixJSON promql.Matrix

// MarshalJSON writes `[series,series,...]`; an empty matrix is `[]`.
func (m matrixJSON) MarshalJSON() ([]byte, error) {
	b := []byte{'['}
	for i, s := range m {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSeries(b, s)
	}
	return append(b, ']'), nil
}

// appendSeries writes {"metric":{…},"values":[[ts,"v"],…],"histograms":[[ts,{…}],…]},
// leaving out empty values and histograms.
func appendSeries(b []byte, s promql.Series) []byte {
	b = append(b, `{"metric":`...)
	b = appendLabels(b, s.Metric)
	if len(s.Floats) > 0 {
		b = append(b, `,"values":[`...)
		for i, p := range s.Floats {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = appendTimestamp(b, p.T)
			b = append(b, ',')
			b = appendFloat(b, p.F)
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	if len(s.Histograms) > 0 {
		b = append(b, `,"histograms":[`...)
		for i, p := range s.Histograms {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = appendTimestamp(b, p.T)
			b = append(b, ',')
			b = appendHistogram(b, p.H)
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendSample writes {"metric":{…},"value":[ts,"v"]} or, for a histogram
// sample, {"metric":{…},"histogram":[ts,{…}]}.
func appendSample(b []byte, s promql.Sample) []byte {
	b = append(b, `{"metric":`...)
	b = appendLabels(b, s.Metric)
	if s.H == nil {
		b = append(b, `,"value":[`...)
	} else {
		b = append(b, `,"histogram":[`...)
	}
	b = appendTimestamp(b, s.T)
	b = append(b, ',')
	if s.H == nil {
		b = appendFloat(b, s.F)
	} else {
		b = appendHistogram(b, s.H)
	}
	return append(b, `]}`...)
}

// appendLabels writes the labels as an object in their (sorted) order.
func appendLabels(b []byte, ls labels.Labels) []byte {
	b = append(b, '{')
	i := 0
	ls.Range(func(l labels.Label) {
		if i > 0 {
			b = append(b, ',')
		}
		i++
		b = appendString(b, l.Name)
		b = append(b, ':')
		b = appendString(b, l.Value)
	})
	return append(b, '}')
}

// appendString quotes s as encoding/json does, with HTML escaping, as
// json-iterator's standard-library-compatible configuration does.
func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// appendTimestamp writes milliseconds as seconds with up to three
// decimals (util/jsonutil.MarshalTimestamp).
func appendTimestamp(b []byte, t int64) []byte {
	if t < 0 {
		b = append(b, '-')
		t = -t
	}
	b = strconv.AppendInt(b, t/1000, 10)
	if fraction := t % 1000; fraction != 0 {
		b = append(b, '.')
		if fraction < 100 {
			b = append(b, '0')
		}
		if fraction < 10 {
			b = append(b, '0')
		}
		b = strconv.AppendInt(b, fraction, 10)
	}
	return b
}

// appendFloat writes a quoted sample value (util/jsonutil.MarshalFloat);
// quoting lets NaN and ±Inf through.
func appendFloat(b []byte, f float64) []byte {
	b = append(b, '"')
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	return append(b, '"')
}

// appendHistogram writes a native histogram (util/jsonutil.MarshalHistogram):
// {"count":"…","sum":"…","buckets":[[boundaries,"lower","upper","count"],…]},
// where boundaries is 0 (upper inclusive), 1 (lower inclusive), 2 (open)
// or 3 (closed), and empty buckets are left out.
func appendHistogram(b []byte, h *histogram.FloatHistogram) []byte {
	b = append(b, `{"count":`...)
	b = appendFloat(b, h.Count)
	b = append(b, `,"sum":`...)
	b = appendFloat(b, h.Sum)
	found := false
	it := h.AllBucketIterator()
	for it.Next() {
		bucket := it.At()
		if bucket.Count == 0 {
			continue
		}
		if found {
			b = append(b, ',')
		} else {
			b = append(b, `,"buckets":[`...)
			found = true
		}
		boundaries := 2
		switch {
		case bucket.LowerInclusive && bucket.UpperInclusive:
			boundaries = 3
		case bucket.LowerInclusive:
			boundaries = 1
		case bucket.UpperInclusive:
			boundaries = 0
		}
		b = append(b, '[')
		b = strconv.AppendInt(b, int64(boundaries), 10)
		b = append(b, ',')
		b = appendFloat(b, bucket.Lower)
		b = append(b, ',')
		b = appendFloat(b, bucket.Upper)
		b = append(b, ',')
		b = appendFloat(b, bucket.Count)
		b = append(b, ']')
	}
	if found {
		b = append(b, ']')
	}
	return append(b, '}')
}
