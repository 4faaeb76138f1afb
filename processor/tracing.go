package processor

import (
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"
)

// StatsHandler returns the gRPC stats handler that gives each ext_proc
// stream its span (named envoy.service.ext_proc.v3.ExternalProcessor/Process),
// continuing the trace whose context Envoy sends in the stream's metadata
// (extracted by propagator: W3C traceparent, B3, …). The spans of the
// Server's phases (Options.TracerProvider) are its children. Health
// checks get no span. Install it with grpc.StatsHandler.
func StatsHandler(tp trace.TracerProvider, propagator propagation.TextMapPropagator) stats.Handler {
	prefix := "/" + ServiceName + "/"
	return otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(propagator),
		// Spans only: the processor's Prometheus metrics measure the rest.
		otelgrpc.WithMeterProvider(noop.NewMeterProvider()),
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
			return strings.HasPrefix(info.FullMethodName, prefix)
		}),
	)
}
