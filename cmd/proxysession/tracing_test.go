package main

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor/envoytest"
)

// collector is an OTLP/HTTP trace receiver.
type collector struct {
	mu      sync.Mutex
	spans   []*tracepb.Span
	service []string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				c.service = append(c.service, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Write(b)
}

// TestTracingExportsEnvoysTrace: with -tracing, proxysession continues
// the trace whose context Envoy sends in the stream's metadata and
// exports its spans over OTLP as the OTEL_* variables say; health checks
// are not traced; the spans are flushed on shutdown.
func TestTracingExportsEnvoysTrace(t *testing.T) {
	col := &collector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	t.Setenv("OTEL_SERVICE_NAME", "")
	inst := start(t, "-tracing")
	conn := dial(t, inst.grpcAddr, nil)
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	f := &envoytest.Filter{Client: extprocv3.NewExternalProcessorClient(conn), Backend: loginBackend(), MessageTimeout: 5 * time.Second}
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("traceparent", "00-"+traceID+"-"+parentID+"-01"))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://app.test/login", nil)
	resp, err := envoytest.NewBrowser(f).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	var names []string
	var stream *tracepb.Span
	for _, s := range col.spans {
		names = append(names, s.GetName())
		if hex.EncodeToString(s.GetTraceId()) != traceID {
			t.Errorf("span %s is in trace %x", s.GetName(), s.GetTraceId())
		}
		if s.GetKind() == tracepb.Span_SPAN_KIND_SERVER {
			stream = s
		}
	}
	slices.Sort(names)
	if want := []string{"envoy.service.ext_proc.v3.ExternalProcessor/Process", "request_headers", "response_headers"}; !slices.Equal(names, want) {
		t.Fatalf("exported spans %q, want %q", names, want)
	}
	if hex.EncodeToString(stream.GetParentSpanId()) != parentID {
		t.Errorf("stream span's parent %x, want Envoy's %s", stream.GetParentSpanId(), parentID)
	}
	for _, s := range col.spans {
		if s != stream && !slices.Equal(s.GetParentSpanId(), stream.GetSpanId()) {
			t.Errorf("%s is not a child of the stream's span", s.GetName())
		}
	}
	if len(col.service) == 0 || col.service[0] != "proxysession" {
		t.Errorf("service.name %q", col.service)
	}
}

func TestTracingSettings(t *testing.T) {
	for _, env := range []string{"OTEL_TRACES_EXPORTER=zipkin", "OTEL_EXPORTER_OTLP_PROTOCOL=http/json"} {
		k, v, _ := strings.Cut(env, "=")
		t.Run(env, func(t *testing.T) {
			t.Setenv(k, v)
			err := run(context.Background(), []string{"-tracing", "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, io.Discard, io.Discard, hooks{})
			if _, ok := errors.AsType[*usageError](err); !ok || !strings.Contains(err.Error(), k) {
				t.Errorf("err = %v, want a usage error naming %s", err, k)
			}
		})
	}
	// Off, tracing costs nothing: no provider, no gRPC stats handler.
	tr, err := newTracing(context.Background(), &config.Config{}, nil)
	if err != nil || tr.provider != nil || tr.serverOptions() != nil {
		t.Errorf("tracing off: %+v, %v", tr, err)
	}
	tr.shutdown()
}
