package processor

import "github.com/prometheus/client_golang/prometheus"

// The tests of package processor_test run the processor through
// extproctest, which imports this package; these are the internals they
// check.

type Phase = phase

const (
	PhaseRequestHeaders  = phaseRequestHeaders
	PhaseResponseHeaders = phaseResponseHeaders
	OutcomeIgnored       = outcomeIgnored
	OutcomeUnavailable   = outcomeUnavailable
)

// BadInput returns the proxysession_bad_input_total counter of reason.
func (m *Metrics) BadInput(reason string) prometheus.Counter {
	return m.badInput.WithLabelValues(reason)
}

// Message returns the proxysession_messages_total counter of p and o.
func (m *Metrics) Message(p Phase, o outcome) prometheus.Counter { return m.message(p, o) }
