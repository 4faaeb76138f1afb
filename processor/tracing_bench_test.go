package processor

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// BenchmarkHandleTracing is BenchmarkHandle with tracing on, every
// request sampled: the two phase spans under a stream span (which
// otelgrpc makes, outside this loop), batched to an exporter that drops
// them.
func BenchmarkHandleTracing(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer tp.Shutdown(context.Background())
	ctx, stream := tp.Tracer("bench").Start(context.Background(), "stream")
	defer stream.End()
	benchHandle(b, ctx, Options{TracerProvider: tp})
}
