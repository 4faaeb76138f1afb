package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor"
)

// defaultServiceName is the service.name of proxysession's spans unless
// OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names another.
const defaultServiceName = "proxysession"

// tracing is the OpenTelemetry set-up of -tracing: off (the zero value:
// no spans, no cost) or a tracer provider exporting over OTLP.
type tracing struct {
	// provider is nil when tracing is off.
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider
	log      *slog.Logger
}

// newTracing sets tracing up as cfg says, from the standard OTEL_*
// environment variables: OTEL_TRACES_EXPORTER (otlp, the default, or
// none), OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (http/protobuf, the
// default, or grpc), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS,
// _CERTIFICATE…, OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_*, OTEL_SERVICE_NAME
// and OTEL_RESOURCE_ATTRIBUTES, all read by the SDK itself.
func newTracing(ctx context.Context, cfg *config.Config, log *slog.Logger) (*tracing, error) {
	t := &tracing{log: log}
	if !cfg.Tracing {
		return t, nil
	}
	exporter, err := newSpanExporter(ctx, os.Getenv)
	if err != nil {
		return nil, &usageError{fmt.Errorf("-tracing: %w", err)}
	}
	if exporter == nil {
		log.Info("tracing: OTEL_TRACES_EXPORTER=none; no spans are exported")
		return t, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(defaultServiceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		// A malformed OTEL_RESOURCE_ATTRIBUTES: keep what could be read.
		log.Warn("tracing: resource attributes", slog.String("error", err.Error()))
	}
	// Export failures (collector down) are logged, not fatal: the
	// batcher drops spans rather than slow down the ext_proc answers.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: exporting spans failed", slog.String("error", err.Error()))
	}))
	// The sampler comes from OTEL_TRACES_SAMPLER (default
	// parentbased_always_on: Envoy's sampling decision is followed).
	t.sdk = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	t.provider = t.sdk
	log.Info("tracing on", slog.String("service", serviceName(res)))
	return t, nil
}

func serviceName(res *resource.Resource) string {
	if v, ok := res.Set().Value(semconv.ServiceNameKey); ok {
		return v.AsString()
	}
	return ""
}

// newSpanExporter returns the OTLP exporter that the environment asks
// for, or nil for OTEL_TRACES_EXPORTER=none.
func newSpanExporter(ctx context.Context, getenv func(string) string) (sdktrace.SpanExporter, error) {
	switch e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e {
	case "", "otlp":
	case "none":
		return nil, nil
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: proxysession exports otlp or none", e)
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch strings.TrimSpace(protocol) {
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: must be http/protobuf or grpc", protocol)
	}
}

// propagator extracts the trace context Envoy sends in the ext_proc
// stream's metadata: W3C traceparent (Envoy's OpenTelemetry tracer) or
// B3, multi- or single-header (its Zipkin tracer).
func propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New())
}

// serverOptions are the gRPC server options of tracing: the stats handler
// that gives each ext_proc stream its span. None when tracing is off.
func (t *tracing) serverOptions() []grpc.ServerOption {
	if t.provider == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(processor.StatsHandler(t.provider, propagator()))}
}

// shutdown exports the spans still buffered, for 5 seconds at most.
func (t *tracing) shutdown() {
	if t.sdk == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.sdk.Shutdown(ctx); err != nil {
		t.log.Warn("tracing: flushing spans at shutdown", slog.String("error", err.Error()))
	}
}
