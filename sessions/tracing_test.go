package sessions

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
)

// switchableStore is a store behind the Store interface (its calls count
// as round trips) that fails while fail is set.
type switchableStore struct {
	Store
	fail atomic.Bool
}

var errTestStoreDown = errors.New("redis find: i/o timeout")

func (s *switchableStore) Find(ctx context.Context, id ID) (*Session, error) {
	if s.fail.Load() {
		return nil, errTestStoreDown
	}
	return s.Store.Find(ctx, id)
}

func (s *switchableStore) Commit(ctx context.Context, sess *Session, ch *Changes) error {
	if s.fail.Load() {
		return errTestStoreDown
	}
	return s.Store.Commit(ctx, sess, ch)
}

func (s *switchableStore) Delete(ctx context.Context, id ID) error {
	if s.fail.Load() {
		return errTestStoreDown
	}
	return s.Store.Delete(ctx, id)
}

func TestSessionHandlerSpans(t *testing.T) {
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	defer tp.Shutdown(context.Background())
	mem, err := NewMemoryStore(10)
	if err != nil {
		t.Fatal(err)
	}
	store := &switchableStore{Store: mem}
	c := newTestCache(t, Config{Store: store, TracerProvider: tp, PassThrough: []string{"XSRF-TOKEN"}})
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/login":
			w.Header().Add("Set-Cookie", "plantedname=plantedvalue; Path=/; Secure")
			w.Header().Add("Set-Cookie", "XSRF-TOKEN=plantedtoken; Path=/")
			w.Header().Add("Set-Cookie", "__Host-bad=plantedbad; Path=/app")
		case "/logout":
			w.Header().Set("Clear-Site-Data", `"cookies"`)
		}
	})
	h := c.SessionHandler(backend, nil)
	parentTracer := tp.Tracer("test")

	// serve runs one request under a server span (otelhttp's, say) and
	// returns that span's children by name.
	var sessionCookie string
	var all []tracetest.SpanStub
	serve := func(path string) map[string]tracetest.SpanStub {
		t.Helper()
		exporter.Reset()
		ctx, parent := parentTracer.Start(context.Background(), "GET")
		r := httptest.NewRequestWithContext(ctx, http.MethodGet, "https://planted-host.example"+path+"?q=plantedquery", nil)
		r.Header.Set("Cookie", "plantedbrowser=plantedbrowservalue")
		if sessionCookie != "" {
			r.Header.Add("Cookie", c.CookieName()+"="+sessionCookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		parent.End()
		for _, sc := range w.Result().Cookies() {
			if sc.Name == c.CookieName() && sc.Value != "" {
				sessionCookie = sc.Value
			}
		}
		got := map[string]tracetest.SpanStub{}
		for _, s := range exporter.GetSpans() {
			all = append(all, s)
			if s.Name == "GET" {
				continue
			}
			if s.Parent.SpanID() != parent.SpanContext().SpanID() {
				t.Errorf("%s: span %s is not a child of the request's span", path, s.Name)
			}
			got[s.Name] = s
		}
		return got
	}
	check := func(s tracetest.SpanStub, want string) {
		t.Helper()
		var got []string
		for _, kv := range s.Attributes {
			got = append(got, fmt.Sprintf("%s=%s", strings.TrimPrefix(string(kv.Key), "proxysession."), kv.Value.String()))
		}
		if g := strings.Join(got, " "); g != want {
			t.Errorf("%s span:\n got %s\nwant %s", s.Name, g, want)
		}
	}

	spans := serve("/login")
	check(spans["request_headers"], "outcome=unchanged session=none store.round_trips=0 cookies.sent=0")
	check(spans["response_headers"], "outcome=modified session=new store.round_trips=1 cookies.captured=1 cookies.rejected=1 cookies.passed_through=1 cookies.rejected.prefix=1")
	if sessionCookie == "" {
		t.Fatal("no session cookie")
	}

	spans = serve("/app")
	check(spans["request_headers"], "outcome=modified session=known store.round_trips=1 cookies.sent=1")
	check(spans["response_headers"], "outcome=unchanged session=known store.round_trips=0 cookies.captured=0 cookies.rejected=0")

	spans = serve("/logout")
	check(spans["response_headers"], "outcome=modified session=ended store.round_trips=1 session.end_reason=logout cookies.captured=0 cookies.rejected=0")

	// The session is gone: its cookie is unknown now.
	spans = serve("/app")
	check(spans["request_headers"], "outcome=modified session=none store.round_trips=1 cookies.sent=0 session.unknown_cookie=true")

	sessionCookie = ""
	serve("/login")
	store.fail.Store(true)
	spans = serve("/app")
	req := spans["request_headers"]
	check(req, "outcome=unavailable session=none store.round_trips=1 cookies.sent=0")
	if req.Status.Code != codes.Error || req.Status.Description != "finding session: "+errTestStoreDown.Error() {
		t.Errorf("status %+v", req.Status)
	}
	if _, ok := spans["response_headers"]; ok {
		t.Error("a failed request has a response span")
	}

	for _, s := range all {
		var b strings.Builder
		fmt.Fprintln(&b, s.Name, s.Status.Description)
		for _, kv := range append(s.Attributes, s.Resource.Attributes()...) {
			fmt.Fprintln(&b, kv.Key, kv.Value.String())
		}
		for _, e := range s.Events {
			set := attribute.NewSet(e.Attributes...)
			fmt.Fprintln(&b, e.Name, set.Encoded(attribute.DefaultEncoder()))
		}
		for _, secret := range []string{"planted", sessionCookie} {
			if strings.Contains(b.String(), secret) {
				t.Errorf("span %s carries %q:\n%s", s.Name, secret, b.String())
			}
		}
	}
}

// TestTracingOffCostsNothing: without a TracerProvider, or with a no-op
// one, the handler's allocations are those of the engine alone.
func TestTracingOffCostsNothing(t *testing.T) {
	if NewTracer(nil) != nil || NewTracer(noop.NewTracerProvider()) != nil {
		t.Fatal("a Tracer for no provider")
	}
	c := newTestCache(t, Config{Logger: discardLogger()})
	var x Exchange
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		ctx, span := c.tracer.Start(ctx, PhaseRequest, &x)
		span.End(&x, false, nil)
		_ = ctx
	})
	if allocs != 0 {
		t.Errorf("a phase without tracing allocates %v times", allocs)
	}
}
