package processor

import (
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// phase is the kind of ext_proc message.
type phase uint8

const (
	phaseRequestHeaders phase = iota
	phaseResponseHeaders
	phaseRequestBody
	phaseResponseBody
	phaseRequestTrailers
	phaseResponseTrailers
	phaseUnknown
	numPhases
)

var phaseNames = [numPhases]string{
	"request_headers", "response_headers", "request_body", "response_body",
	"request_trailers", "response_trailers", "unknown",
}

func (p phase) String() string { return phaseNames[p] }

// outcome is what the processor did with a message.
type outcome uint8

const (
	outcomeUnchanged   outcome = iota // replied without a mutation
	outcomeModified                   // replied with a header mutation
	outcomeUnavailable                // the store failed: ImmediateResponse 503
	outcomeIgnored                    // no reply: observability mode or unknown message
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"unchanged", "modified", "unavailable", "ignored"}

// Metrics are the processor's Prometheus metrics. Create them with
// NewMetrics and register them with Register.
type Metrics struct {
	messages      [numPhases][numOutcomes]prometheus.Counter
	messagesVec   *prometheus.CounterVec
	latency       [numPhases]prometheus.Observer
	latencyVec    *prometheus.HistogramVec
	streamsActive prometheus.Gauge
	streamErrors  *prometheus.CounterVec
	badInput      *prometheus.CounterVec
}

// NewMetrics creates the processor's metrics, with every label value
// present from the start so that rates work from the first scrape.
func NewMetrics() *Metrics {
	m := &Metrics{
		messagesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_messages_total",
			Help: "ext_proc messages handled, by phase and outcome (unchanged, modified, unavailable = answered 503 because the session store failed, ignored).",
		}, []string{"phase", "outcome"}),
		latencyVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "proxysession_processing_seconds",
			Help:    "Time to process one ext_proc message, by phase; Envoy's message_timeout (default 200ms) bounds it.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 14), // 25µs … 200ms
		}, []string{"phase"}),
		streamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "proxysession_streams_active",
			Help: "ext_proc streams open now (one per HTTP request in flight).",
		}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_stream_errors_total",
			Help: "ext_proc streams that failed other than by Envoy's normal close, by direction (recv, send).",
		}, []string{"direction"}),
		badInput: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_bad_input_total",
			Help: "Malformed or unexpected input tolerated by the processor, by reason.",
		}, []string{"reason"}),
	}
	for p := range numPhases {
		for o := range numOutcomes {
			m.messages[p][o] = m.messagesVec.WithLabelValues(p.String(), outcomeNames[o])
		}
		m.latency[p] = m.latencyVec.WithLabelValues(p.String())
	}
	for _, d := range []string{"recv", "send"} {
		m.streamErrors.WithLabelValues(d)
	}
	for _, r := range []string{
		"missing_authority", "missing_path", "missing_scheme", "unknown_message",
		"response_without_request", "oversized_cookie", "oversized_set_cookie",
	} {
		m.badInput.WithLabelValues(r)
	}
	return m
}

// Register registers the metrics with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.messagesVec, m.latencyVec, m.streamsActive, m.streamErrors, m.badInput} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *Metrics) message(p phase, o outcome) prometheus.Counter { return m.messages[p][o] }

// observe records a handled headers message.
func (m *Metrics) observe(p phase, modified bool, start time.Time) {
	o := outcomeUnchanged
	if modified {
		o = outcomeModified
	}
	m.messages[p][o].Inc()
	m.latency[p].Observe(time.Since(start).Seconds())
}

// phaseOf returns the phase of a request message.
func phaseOf(req *extprocv3.ProcessingRequest) phase {
	switch req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return phaseRequestHeaders
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return phaseResponseHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		return phaseRequestBody
	case *extprocv3.ProcessingRequest_ResponseBody:
		return phaseResponseBody
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return phaseRequestTrailers
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return phaseResponseTrailers
	}
	return phaseUnknown
}
