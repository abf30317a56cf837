package promapi

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
)

// The cases and expected bytes are those of web/api/v1/json_codec_test.go
// (prometheus v0.316.0), run through this package's encoding.
func TestEncodeLikePrometheus(t *testing.T) {
	tests := []struct {
		name  string
		value parser.Value
		want  string
	}{
		{
			name: "vector",
			value: promql.Vector{
				{Metric: labels.FromStrings("__name__", "foo"), T: 1000, F: 1},
				{Metric: labels.FromStrings("__name__", "bar"), T: 2000, F: 2},
			},
			want: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"foo"},"value":[1,"1"]},{"metric":{"__name__":"bar"},"value":[2,"2"]}]}}`,
		},
		{
			name:  "empty vector",
			value: promql.Vector{},
			want:  `{"status":"success","data":{"resultType":"vector","result":[]}}`,
		},
		{
			name: "matrix",
			value: promql.Matrix{
				{Metric: labels.FromStrings("__name__", "foo"), Floats: []promql.FPoint{{F: 1, T: 1000}}},
				{Metric: labels.FromStrings("__name__", "bar"), Floats: []promql.FPoint{{F: 2, T: 2000}}},
			},
			want: `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"foo"},"values":[[1,"1"]]},{"metric":{"__name__":"bar"},"values":[[2,"2"]]}]}}`,
		},
		{
			name: "histogram matrix",
			value: promql.Matrix{{
				Metric: labels.FromStrings("__name__", "foo"),
				Histograms: []promql.HPoint{{T: 1000, H: &histogram.FloatHistogram{
					Schema:          2,
					ZeroThreshold:   0.001,
					ZeroCount:       12,
					Count:           10,
					Sum:             20,
					PositiveSpans:   []histogram.Span{{Offset: 3, Length: 2}, {Offset: 1, Length: 3}},
					NegativeSpans:   []histogram.Span{{Offset: 2, Length: 2}},
					PositiveBuckets: []float64{1, 2, 2, 1, 1},
					NegativeBuckets: []float64{2, 1},
				}}},
			}},
			want: `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"foo"},"histograms":[[1,{"count":"10","sum":"20","buckets":[[1,"-1.6817928305074288","-1.414213562373095","1"],[1,"-1.414213562373095","-1.189207115002721","2"],[3,"-0.001","0.001","12"],[0,"1.414213562373095","1.6817928305074288","1"],[0,"1.6817928305074288","2","2"],[0,"2.378414230005442","2.82842712474619","2"],[0,"2.82842712474619","3.3635856610148576","1"],[0,"3.3635856610148576","4","1"]]}]]}]}}`,
		},
		{
			name:  "histogram sample without buckets",
			value: promql.Vector{{Metric: labels.EmptyLabels(), T: 1500, H: &histogram.FloatHistogram{Count: 0, Sum: 0}}},
			want:  `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1.500,{"count":"0","sum":"0"}]}]}}`,
		},
		{
			name:  "scalar",
			value: promql.Scalar{T: 1001, V: 1e-7},
			want:  `{"status":"success","data":{"resultType":"scalar","result":[1.001,"0.0000001"]}}`,
		},
		{
			name:  "string",
			value: promql.String{T: 1000, V: "<b>"},
			want:  `{"status":"success","data":{"resultType":"string","result":[1,"\u003cb\u003e"]}}`,
		},
		{
			name:  "label escaping",
			value: promql.Vector{{Metric: labels.FromStrings("a", "\"<&>\n\u2028"), T: 0, F: 0}},
			want:  `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"\"\u003c\u0026\u003e\n\u2028"},"value":[0,"0"]}]}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(&response{
				Status: statusSuccess,
				Data:   &queryData{ResultType: tt.value.Type(), Result: resultJSON(tt.value)},
			})
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestEncodePoint(t *testing.T) {
	tests := []struct {
		t    int64
		f    float64
		want string
	}{
		{0, 0, `[0,"0"]`},
		{1, 20, `[0.001,"20"]`},
		{10, 20, `[0.010,"20"]`},
		{100, 20, `[0.100,"20"]`},
		{1001, 20, `[1.001,"20"]`},
		{1010, 20, `[1.010,"20"]`},
		{1100, 20, `[1.100,"20"]`},
		{12345678123456555, 20, `[12345678123456.555,"20"]`},
		{-1, 20, `[-0.001,"20"]`},
		{0, math.NaN(), `[0,"NaN"]`},
		{0, math.Inf(1), `[0,"+Inf"]`},
		{0, math.Inf(-1), `[0,"-Inf"]`},
		{0, 1.2345678e6, `[0,"1234567.8"]`},
		{0, 1.2345678e-6, `[0,"0.0000012345678"]`},
		{0, 1.2345678e-67, `[0,"1.2345678e-67"]`},
		{0, 1e21, `[0,"1e+21"]`},
	}
	for _, tt := range tests {
		b := []byte{'['}
		b = appendTimestamp(b, tt.t)
		b = append(b, ',')
		b = appendFloat(b, tt.f)
		b = append(b, ']')
		if string(b) != tt.want {
			t.Errorf("point (%d, %v) = %s, want %s", tt.t, tt.f, b, tt.want)
		}
	}
}
