package processor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// flakyStore is a memory store behind the Store interface (so that the
// engine counts its calls as round trips) that fails while fail is set.
type flakyStore struct {
	sessions.Store
	fail atomic.Bool
}

var errStoreDown = errors.New("redis find: dial tcp 10.0.0.1:6379: connect: connection refused")

func (f *flakyStore) Find(ctx context.Context, id sessions.ID) (*sessions.Session, error) {
	if f.fail.Load() {
		return nil, errStoreDown
	}
	return f.Store.Find(ctx, id)
}

func (f *flakyStore) Commit(ctx context.Context, s *sessions.Session, ch *sessions.Changes) error {
	if f.fail.Load() {
		return errStoreDown
	}
	return f.Store.Commit(ctx, s, ch)
}

func (f *flakyStore) Delete(ctx context.Context, id sessions.ID) error {
	if f.fail.Load() {
		return errStoreDown
	}
	return f.Store.Delete(ctx, id)
}

// tracingHarness is the processor with tracing on, served over gRPC with
// processor.StatsHandler, spans recorded in memory.
type tracingHarness struct {
	spans  *tracetest.InMemoryExporter
	store  *flakyStore
	filter *envoytest.Filter
}

// Planted secrets: none of them may appear in any span.
const (
	plantedHost   = "planted-host.example"
	plantedQuery  = "plantedquery"
	plantedName1  = "plantedname1"
	plantedValue1 = "plantedvalue1"
	plantedName2  = "plantedname2"
	plantedValue2 = "plantedvalue2"
	plantedReject = "plantedrejectvalue"
	plantedBrowse = "plantedbrowservalue"
)

// tracingBackend logs in (/login: two cookies stored, one rejected for
// its Domain), echoes (/echo) and logs out (/logout).
func tracingBackend() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", plantedName1+"="+plantedValue1+"; Path=/; Secure; HttpOnly")
		w.Header().Add("Set-Cookie", plantedName2+"="+plantedValue2+"; Path=/")
		w.Header().Add("Set-Cookie", "plantedrejectname="+plantedReject+"; Domain=elsewhere.example")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Clear-Site-Data", `"cookies"`)
	})
	return mux
}

func newTracingHarness(t *testing.T) *tracingHarness {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	mem, err := sessions.NewMemoryStore(100)
	if err != nil {
		t.Fatal(err)
	}
	store := &flakyStore{Store: mem}
	cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler), Store: store})
	if err != nil {
		t.Fatal(err)
	}
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New())
	gs := grpc.NewServer(processor.ServerOptions(grpc.StatsHandler(processor.StatsHandler(tp, prop)))...)
	processor.Register(gs, processor.New(cache, processor.Options{Logger: slog.New(slog.DiscardHandler), TracerProvider: tp}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	filter := &envoytest.Filter{Client: extprocv3.NewExternalProcessorClient(conn), Backend: tracingBackend(), MessageTimeout: 5 * time.Second}
	return &tracingHarness{spans: spans, store: store, filter: filter}
}

// envoySpan is the span of Envoy's ext_proc call, as Envoy's tracer
// would send it in the stream's metadata.
type envoySpan struct {
	trace trace.TraceID
	span  trace.SpanID
}

var nextEnvoySpan atomic.Uint64

func newEnvoySpan() envoySpan {
	n := nextEnvoySpan.Add(1)
	var s envoySpan
	copy(s.trace[:], fmt.Sprintf("envoytrace%06d", n))
	copy(s.span[:], fmt.Sprintf("es%06d", n))
	return s
}

// do sends one request through the Envoy stand-in, with Envoy's trace
// context in the ext_proc stream's metadata (traceparent, or b3 headers),
// and returns the spans of its stream: the stream's own, then its
// children, by name.
func (h *tracingHarness) do(t *testing.T, browser *http.Client, path string, b3Headers bool, wantSpans int) (envoySpan, map[string]tracetest.SpanStub) {
	t.Helper()
	h.spans.Reset()
	parent := newEnvoySpan()
	md := metadata.Pairs("traceparent", fmt.Sprintf("00-%s-%s-01", parent.trace, parent.span))
	if b3Headers {
		md = metadata.Pairs("x-b3-traceid", parent.trace.String(), "x-b3-spanid", parent.span.String(), "x-b3-sampled", "1")
	}
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+plantedHost+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Cookie", "plantedbrowser="+plantedBrowse)
	resp, err := browser.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The stream's span ends when the server sees the stream end, a
	// moment after the client is done.
	// Spans of other traces (a previous stream's, ending late) are left
	// out.
	got := map[string]tracetest.SpanStub{}
	for deadline := time.Now().Add(5 * time.Second); len(got) < wantSpans && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		clear(got)
		for _, s := range h.spans.GetSpans() {
			if s.SpanContext.TraceID() == parent.trace {
				got[s.Name] = s
			}
		}
	}
	if len(got) != wantSpans {
		t.Fatalf("%s: got spans %v, want %d", path, keys(got), wantSpans)
	}
	return parent, got
}

func keys(m map[string]tracetest.SpanStub) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

const streamSpanName = processor.ServiceName + "/Process"

// checkTree checks that the stream's span continues Envoy's trace and
// that each phase span is its child.
func checkTree(t *testing.T, parent envoySpan, spans map[string]tracetest.SpanStub, phases ...string) {
	t.Helper()
	stream, ok := spans[streamSpanName]
	if !ok {
		t.Fatalf("no stream span among %v", keys(spans))
	}
	if stream.SpanContext.TraceID() != parent.trace || stream.Parent.SpanID() != parent.span || !stream.Parent.IsRemote() {
		t.Errorf("stream span %v has parent %v, want Envoy's %v/%v", stream.SpanContext.TraceID(), stream.Parent, parent.trace, parent.span)
	}
	if stream.SpanKind != trace.SpanKindServer {
		t.Errorf("stream span kind %v", stream.SpanKind)
	}
	for _, name := range phases {
		s, ok := spans[name]
		if !ok {
			t.Errorf("no %s span among %v", name, keys(spans))
			continue
		}
		if s.Parent.SpanID() != stream.SpanContext.SpanID() || s.SpanContext.TraceID() != parent.trace {
			t.Errorf("%s span's parent is %v, want the stream's span %v", name, s.Parent.SpanID(), stream.SpanContext.SpanID())
		}
	}
}

// checkAttrs checks that span has exactly the proxysession.* attributes
// of want (values as Value.String writes them).
func checkAttrs(t *testing.T, s tracetest.SpanStub, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, kv := range s.Attributes {
		if strings.HasPrefix(string(kv.Key), "proxysession.") {
			got[string(kv.Key)] = kv.Value.String()
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s span attributes:\n got %v\nwant %v", s.Name, got, want)
	}
}

// spanText is everything a span exports that could carry a secret.
func spanText(s tracetest.SpanStub) string {
	var b strings.Builder
	add := func(attrs []attribute.KeyValue) {
		for _, kv := range attrs {
			fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value.String())
		}
	}
	fmt.Fprintf(&b, "%s\n%s\n", s.Name, s.Status.Description)
	add(s.Attributes)
	for _, e := range s.Events {
		b.WriteString(e.Name + "\n")
		add(e.Attributes)
	}
	for _, l := range s.Links {
		add(l.Attributes)
	}
	add(s.Resource.Attributes())
	return b.String()
}

func TestSpans(t *testing.T) {
	h := newTracingHarness(t)
	browser := envoytest.NewBrowser(h.filter)
	var all []tracetest.SpanStub
	collect := func(spans map[string]tracetest.SpanStub) {
		for _, s := range spans {
			all = append(all, s)
		}
	}

	// Login: no session on the way in; the response creates one with
	// two cookies and rejects the third.
	parent, spans := h.do(t, browser, "/login?q="+plantedQuery, false, 3)
	checkTree(t, parent, spans, "request_headers", "response_headers")
	checkAttrs(t, spans["request_headers"], map[string]string{
		"proxysession.outcome": "unchanged", "proxysession.session": "none",
		"proxysession.cookies.sent": "0", "proxysession.store.round_trips": "0",
	})
	checkAttrs(t, spans["response_headers"], map[string]string{
		"proxysession.outcome": "modified", "proxysession.session": "new",
		"proxysession.cookies.captured": "2", "proxysession.cookies.rejected": "1",
		"proxysession.cookies.rejected.domain_mismatch": "1", "proxysession.store.round_trips": "1",
	})
	collect(spans)
	sessionID := ""
	for _, c := range browser.Jar.Cookies(&url.URL{Scheme: "https", Host: plantedHost, Path: "/"}) {
		if c.Name == sessions.DefaultCookieName {
			sessionID = c.Value
		}
	}
	if sessionID == "" {
		t.Fatal("no session cookie after login")
	}

	// Expand, with B3 headers as Envoy's Zipkin tracer sends them: the
	// jar's two cookies go to the backend; nothing to capture.
	parent, spans = h.do(t, browser, "/echo", true, 3)
	checkTree(t, parent, spans, "request_headers", "response_headers")
	checkAttrs(t, spans["request_headers"], map[string]string{
		"proxysession.outcome": "modified", "proxysession.session": "known",
		"proxysession.cookies.sent": "2", "proxysession.store.round_trips": "1",
	})
	checkAttrs(t, spans["response_headers"], map[string]string{
		"proxysession.outcome": "unchanged", "proxysession.session": "known",
		"proxysession.cookies.captured": "0", "proxysession.cookies.rejected": "0",
		"proxysession.store.round_trips": "0",
	})
	collect(spans)

	// Logout ends the session.
	parent, spans = h.do(t, browser, "/logout", false, 3)
	checkTree(t, parent, spans, "request_headers", "response_headers")
	checkAttrs(t, spans["response_headers"], map[string]string{
		"proxysession.outcome": "modified", "proxysession.session": "ended",
		"proxysession.session.end_reason": "logout",
		"proxysession.cookies.captured":   "0", "proxysession.cookies.rejected": "0",
		"proxysession.store.round_trips": "1",
	})
	collect(spans)

	// A store failure: the request phase fails, Envoy answers 503, and
	// there is no response phase.
	get(t, browser, "https://"+plantedHost+"/login")
	h.store.fail.Store(true)
	parent, spans = h.do(t, browser, "/echo", false, 2)
	checkTree(t, parent, spans, "request_headers")
	req := spans["request_headers"]
	checkAttrs(t, req, map[string]string{
		"proxysession.outcome": "unavailable", "proxysession.session": "none",
		"proxysession.cookies.sent": "0", "proxysession.store.round_trips": "1",
	})
	if req.Status.Code != codes.Error || !strings.Contains(req.Status.Description, "connection refused") {
		t.Errorf("failed phase's status = %+v", req.Status)
	}
	collect(spans)

	// No span carries a cookie name or value, a session id, or a header
	// value.
	secrets := []string{plantedHost, plantedQuery, plantedName1, plantedValue1, plantedName2, plantedValue2,
		"plantedrejectname", plantedReject, "plantedbrowser", plantedBrowse, sessionID, "elsewhere.example"}
	for _, s := range all {
		text := spanText(s)
		for _, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("span %s carries %q:\n%s", s.Name, secret, text)
			}
		}
	}
}

// TestNoTracerNoSpans: without a TracerProvider, or with a no-op one,
// the processor makes no spans and no Tracer.
func TestNoTracerNoSpans(t *testing.T) {
	if sessions.NewTracer(nil) != nil || sessions.NewTracer(noop.NewTracerProvider()) != nil {
		t.Error("NewTracer returned a Tracer for no provider")
	}
}
