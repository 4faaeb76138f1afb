package processor_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
	"github.com/proxysession/proxysession/sessions"
)

// harness is proxysession's processor behind a real gRPC listener on
// loopback, with an Envoy stand-in in front of a backend handler.
type harness struct {
	cache   *sessions.Cache
	metrics *processor.Metrics
	client  extprocv3.ExternalProcessorClient
	filter  *envoytest.Filter
}

func newHarness(t testing.TB, cfg sessions.Config, backend http.Handler) *harness {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cache, err := sessions.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newHarnessWithEngine(t, cache, cache, backend)
}

func newHarnessWithEngine(t testing.TB, cache *sessions.Cache, engine processor.Engine, backend http.Handler) *harness {
	t.Helper()
	metrics := processor.NewMetrics()
	srv := extproctest.NewServer(engine, processor.Options{Logger: slog.New(slog.DiscardHandler), Metrics: metrics})
	t.Cleanup(srv.Close)
	return &harness{
		cache:   cache,
		metrics: metrics,
		client:  srv.Client,
		filter:  srv.Filter(backend),
	}
}

// demoBackend is an application with a login flow. /echo and everything
// under /app report the Cookie headers they received as JSON.
func demoBackend() http.Handler {
	mux := http.NewServeMux()
	echo := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Header.Values("Cookie"))
	}
	mux.HandleFunc("/echo", echo)
	mux.HandleFunc("/app/", echo)
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user == "" {
			user = "alice"
		}
		w.Header().Add("Set-Cookie", "sid="+user+"-"+rand.Text()[:8]+"; Path=/; HttpOnly; Secure")
		w.Header().Add("Set-Cookie", "app_pref=compact; Path=/app")
		w.Header().Add("Set-Cookie", "remember=1; Max-Age=3600")
		w.Header().Add("Set-Cookie", "XSRF-TOKEN=tok; Path=/")
		w.Header().Set("Cache-Control", "public, max-age=60")
		http.Redirect(w, r, "/app/home", http.StatusSeeOther)
	})
	mux.HandleFunc("/set", func(w http.ResponseWriter, r *http.Request) {
		for name, values := range r.URL.Query() {
			w.Header().Add("Set-Cookie", name+"="+values[0])
		}
	})
	mux.HandleFunc("/delete", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "sid=; Max-Age=0; Path=/")
	})
	mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Clear-Site-Data", `"cache", "cookies"`)
		w.Header().Add("Set-Cookie", "sid=; Max-Age=0; Path=/")
	})
	return mux
}

var testConfig = sessions.Config{PassThrough: []string{"XSRF-TOKEN"}}

// get fetches u with the browser and returns the response and body.
func get(t testing.TB, browser *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := browser.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// backendCookies returns the Cookie header values the backend saw.
func backendCookies(t testing.TB, browser *http.Client, u string) []string {
	t.Helper()
	resp, body := get(t, browser, u)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	var got []string
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET %s: %v in %q", u, err, body)
	}
	return got
}

func browserCookieNames(browser *http.Client, u string) []string {
	parsed, _ := url.Parse(u)
	var names []string
	for _, c := range browser.Jar.Cookies(parsed) {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	return names
}

func TestLoginFlow(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	browser := envoytest.NewBrowser(h.filter)

	// The login response itself: backend cookies swapped for one session
	// cookie, pass-through cookie kept, shared caches kept out.
	noRedirect := *browser
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := get(t, &noRedirect, "https://app.test/login")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login status = %d", resp.StatusCode)
	}
	setCookies := resp.Header.Values("Set-Cookie")
	if len(setCookies) != 2 || setCookies[0] != "XSRF-TOKEN=tok; Path=/" || !strings.HasPrefix(setCookies[1], sessions.DefaultCookieName+"=") {
		t.Errorf("browser got Set-Cookie %q", setCookies)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "max-age=60, private" {
		t.Errorf("Cache-Control = %q", cc)
	}
	if names := browserCookieNames(browser, "https://app.test/"); !slices.Equal(names, []string{"XSRF-TOKEN", sessions.DefaultCookieName}) {
		t.Errorf("browser holds %v", names)
	}

	got := backendCookies(t, browser, "https://app.test/app/home")
	if len(got) != 1 || !strings.HasPrefix(got[0], "app_pref=compact; sid=alice-") || !strings.HasSuffix(got[0], "; remember=1; XSRF-TOKEN=tok") {
		t.Errorf("backend saw Cookie %q", got)
	}
	if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 1 || strings.Contains(got[0], "app_pref") {
		t.Errorf("path-scoped cookie sent outside its path: %q", got)
	}
	// Over plain http the browser keeps its Secure session cookie home,
	// so only its own pass-through cookie goes.
	if got := backendCookies(t, browser, "http://app.test/echo"); !slices.Equal(got, []string{"XSRF-TOKEN=tok"}) {
		t.Errorf("plain http request carried %q", got)
	}
}

func TestDeletionAndLogout(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	browser := envoytest.NewBrowser(h.filter)
	get(t, browser, "https://app.test/login")

	get(t, browser, "https://app.test/delete")
	if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 1 || strings.Contains(got[0], "sid=") || !strings.Contains(got[0], "remember=1") {
		t.Errorf("after deletion backend saw %q", got)
	}

	old := browser.Jar.Cookies(&url.URL{Scheme: "https", Host: "app.test", Path: "/"})
	get(t, browser, "https://app.test/logout")
	if names := browserCookieNames(browser, "https://app.test/"); slices.Contains(names, sessions.DefaultCookieName) {
		t.Errorf("session cookie survived logout: %v", names)
	}
	if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 1 || got[0] != "XSRF-TOKEN=tok" {
		t.Errorf("after logout backend saw %q", got)
	}
	// Replaying the old session cookie gets nothing.
	replay := envoytest.NewBrowser(h.filter)
	replay.Jar.SetCookies(&url.URL{Scheme: "https", Host: "app.test", Path: "/"}, old)
	if got := backendCookies(t, replay, "https://app.test/echo"); len(got) != 1 || strings.Contains(got[0], "remember") {
		t.Errorf("replayed session cookie reached the jar: %q", got)
	}
	if st := h.cache.Stats(); st.SessionsEnded[sessions.EndLogout] != 1 {
		t.Errorf("logouts = %d", st.SessionsEnded[sessions.EndLogout])
	}
}

func TestTwoBrowsersAreIsolated(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	alice, bob := envoytest.NewBrowser(h.filter), envoytest.NewBrowser(h.filter)
	get(t, alice, "https://app.test/login?user=alice")
	get(t, bob, "https://app.test/login?user=bob")
	a, b := backendCookies(t, alice, "https://app.test/echo"), backendCookies(t, bob, "https://app.test/echo")
	if len(a) != 1 || len(b) != 1 || !strings.Contains(a[0], "sid=alice-") || !strings.Contains(b[0], "sid=bob-") {
		t.Errorf("alice sends %q, bob sends %q", a, b)
	}
}

func TestForgedSessionID(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	browser := envoytest.NewBrowser(h.filter)
	u := &url.URL{Scheme: "https", Host: "app.test", Path: "/"}
	browser.Jar.SetCookies(u, []*http.Cookie{{Name: sessions.DefaultCookieName, Value: strings.Repeat("A", 43), Path: "/", Secure: true}})
	if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 0 {
		t.Errorf("backend saw %q", got)
	}
	if names := browserCookieNames(browser, "https://app.test/"); len(names) != 0 {
		t.Errorf("forged cookie not expired: browser holds %v", names)
	}
	get(t, browser, "https://app.test/set?a=1")
	for _, c := range browser.Jar.Cookies(u) {
		if c.Value == strings.Repeat("A", 43) {
			t.Error("a session was created under the forged id")
		}
	}
	if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 1 || got[0] != "a=1" {
		t.Errorf("backend saw %q", got)
	}
}

// TestParallelRequestsInOneSession: a browser sends requests in parallel;
// every cookie any of them set arrives later.
func TestParallelRequestsInOneSession(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	browser := envoytest.NewBrowser(h.filter)
	get(t, browser, "https://app.test/set?start=1")
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 10 {
				resp, err := browser.Get(fmt.Sprintf("https://app.test/set?w%di%d=v", w, i))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || len(resp.Header.Values("Set-Cookie")) != 0 {
					t.Errorf("status %d, Set-Cookie %q", resp.StatusCode, resp.Header.Values("Set-Cookie"))
				}
			}
		})
	}
	wg.Wait()
	got := backendCookies(t, browser, "https://app.test/echo")
	for w := range 6 {
		for i := range 10 {
			if len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("w%di%d=v", w, i)) {
				t.Fatalf("cookie w%di%d lost: %q", w, i, got)
			}
		}
	}
}

// TestRepliesUseRawValueOnly checks every reply against the Envoy facts:
// raw_value only, Set-Cookie entries appended, and a legacy Envoy that
// sends value instead of raw_value still works.
func TestRepliesUseRawValueOnly(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			h := newHarness(t, testConfig, demoBackend())
			var mu sync.Mutex
			var replies []*extprocv3.ProcessingResponse
			h.filter.LegacyValue = legacy
			h.filter.Trace = func(sent bool, msg any) {
				if !sent {
					mu.Lock()
					replies = append(replies, msg.(*extprocv3.ProcessingResponse))
					mu.Unlock()
				}
			}
			browser := envoytest.NewBrowser(h.filter)
			get(t, browser, "https://app.test/login")
			if got := backendCookies(t, browser, "https://app.test/app/x"); len(got) != 1 || !strings.Contains(got[0], "sid=alice-") {
				t.Fatalf("backend saw %q", got)
			}
			setCookies := 0
			for _, r := range replies {
				var m *extprocv3.HeaderMutation
				switch r := r.Response.(type) {
				case *extprocv3.ProcessingResponse_RequestHeaders:
					m = r.RequestHeaders.GetResponse().GetHeaderMutation()
				case *extprocv3.ProcessingResponse_ResponseHeaders:
					m = r.ResponseHeaders.GetResponse().GetHeaderMutation()
				}
				for _, o := range m.GetSetHeaders() {
					if o.GetHeader().GetValue() != "" || len(o.GetHeader().GetRawValue()) == 0 {
						t.Errorf("header %q not in raw_value only", o.GetHeader().GetKey())
					}
					if o.GetHeader().GetKey() == "set-cookie" {
						setCookies++
						//lint:ignore SA1019 Envoy ignores append_action (envoyproxy/envoy#36982); append is what it reads
						if !o.GetAppend().GetValue() {
							t.Error("set-cookie entry without append: true")
						}
					}
				}
			}
			if setCookies != 2 {
				t.Errorf("%d set-cookie entries in replies, want 2 (XSRF-TOKEN and the session cookie)", setCookies)
			}
			if st := h.filter.Stats(); st.LocalReplies != 0 || st.Spurious != 0 || st.RejectedMutations != 0 {
				t.Errorf("filter stats %+v", st)
			}
		})
	}
}

// openStream opens a raw ext_proc stream for message-level tests.
func openStream(t *testing.T, h *harness) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	stream, err := h.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func TestEveryMessageGetsItsReplyType(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	stream := openStream(t, h)
	msgs := []struct {
		req  *extprocv3.ProcessingRequest
		want string
	}{
		{envoytest.RequestHeaders(":authority", "app.test", ":path", "/", ":method", "POST", ":scheme", "https"), "request_headers"},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x")}}}, "request_body"},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}, "request_trailers"},
		{envoytest.ResponseHeaders(":status", "200"), "response_headers"},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{EndOfStream: true}}}, "response_body"},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}}, "response_trailers"},
	}
	for _, m := range msgs {
		resp := extproctest.Send(t, stream, m.req)
		got := resp.ProtoReflect().WhichOneof(resp.ProtoReflect().Descriptor().Oneofs().ByName("response"))
		if got == nil || string(got.Name()) != m.want {
			t.Errorf("reply to %s is %v", m.want, got)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("after half-close Recv = %v, want EOF (stream ended OK)", err)
	}
}

func TestToleratesBadInput(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	huge := strings.Repeat("v", 40<<10)
	tests := []struct {
		name    string
		headers []string
		check   func(t *testing.T, m *extprocv3.HeaderMutation)
	}{
		{"no pseudo-headers", []string{"cookie", sessions.DefaultCookieName + "=x"}, func(t *testing.T, m *extprocv3.HeaderMutation) {
			if !slices.Equal(m.GetRemoveHeaders(), []string{"cookie"}) {
				t.Errorf("mutation %v, want the stale session cookie removed", m)
			}
		}},
		{"garbage cookies", []string{":authority", "app.test", ":path", "/", ":scheme", "https", "cookie", ";;; =;\xff\xfe; a", "cookie", "=="}, func(t *testing.T, m *extprocv3.HeaderMutation) {
			if m != nil {
				t.Errorf("garbage without a session cookie changed: %v", m)
			}
		}},
		{"huge cookie", []string{":authority", "app.test", ":path", "/", ":scheme", "https", "cookie", "big=" + huge + "; " + sessions.DefaultCookieName + "=x; small=1"}, func(t *testing.T, m *extprocv3.HeaderMutation) {
			if len(m.GetSetHeaders()) != 1 || string(m.GetSetHeaders()[0].GetHeader().GetRawValue()) != "small=1" {
				t.Errorf("mutation %v", m)
			}
		}},
		{"upper-case keys and value field", []string{":AUTHORITY", "app.test", ":path", "/"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := openStream(t, h)
			resp := extproctest.Send(t, stream, envoytest.RequestHeaders(tt.headers...))
			rh, ok := resp.Response.(*extprocv3.ProcessingResponse_RequestHeaders)
			if !ok {
				t.Fatalf("reply %T", resp.Response)
			}
			if tt.check != nil {
				tt.check(t, rh.RequestHeaders.GetResponse().GetHeaderMutation())
			}
			resp = extproctest.Send(t, stream, envoytest.ResponseHeaders(":status", "200", "set-cookie", "a=\x80\xff; Path=/", "set-cookie", "\x01bad"))
			if _, ok := resp.Response.(*extprocv3.ProcessingResponse_ResponseHeaders); !ok {
				t.Fatalf("reply %T", resp.Response)
			}
		})
	}
	if got := testutil.ToFloat64(h.metrics.BadInput("missing_authority")); got != 1 {
		t.Errorf("missing_authority counted %v times", got)
	}
	if got := testutil.ToFloat64(h.metrics.BadInput("oversized_cookie")); got != 1 {
		t.Errorf("oversized_cookie counted %v times", got)
	}
}

// TestResponseWithoutRequest: Envoy configured without request headers.
// The backend's cookies cannot be placed; they are dropped, not leaked.
func TestResponseWithoutRequest(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	stream := openStream(t, h)
	resp := extproctest.Send(t, stream, envoytest.ResponseHeaders(":status", "200", "set-cookie", "sid=1"))
	m := resp.GetResponseHeaders().GetResponse().GetHeaderMutation()
	if !slices.Equal(m.GetRemoveHeaders(), wantRemoved) || len(m.GetSetHeaders()) != 1 ||
		m.GetSetHeaders()[0].GetHeader().GetKey() != "cache-control" || string(m.GetSetHeaders()[0].GetHeader().GetRawValue()) != "private" {
		t.Errorf("mutation %v, want backend cookie removed and the response private", m)
	}
	if got := testutil.ToFloat64(h.metrics.BadInput("response_without_request")); got != 1 {
		t.Errorf("counted %v", got)
	}
}

func TestHugeCookieHeaderIsSplit(t *testing.T) {
	h := newHarness(t, sessions.Config{MaxBytesPerSession: 64 << 10}, demoBackend())
	browser := envoytest.NewBrowser(h.filter)
	value := strings.Repeat("x", 3000)
	q := url.Values{}
	for i := range 12 {
		q.Set(fmt.Sprintf("c%02d", i), value)
	}
	get(t, browser, "https://app.test/set?"+q.Encode())
	got := backendCookies(t, browser, "https://app.test/echo")
	if len(got) < 3 {
		t.Fatalf("backend got %d Cookie headers, want the 36 KB split over several", len(got))
	}
	joined := strings.Join(got, "; ")
	for i := range 12 {
		if !strings.Contains(joined, fmt.Sprintf("c%02d=%s", i, value)) {
			t.Errorf("cookie c%02d missing", i)
		}
	}
	if st := h.filter.Stats(); st.LocalReplies != 0 {
		t.Errorf("filter stats %+v", st)
	}
}

func TestObservabilityModeIsReported(t *testing.T) {
	h := newHarness(t, testConfig, demoBackend())
	stream := openStream(t, h)
	for _, m := range []*extprocv3.ProcessingRequest{
		envoytest.RequestHeaders(":authority", "app.test", ":path", "/", ":scheme", "https"),
		envoytest.ResponseHeaders(":status", "200", "set-cookie", "a=1"),
	} {
		m.ObservabilityMode = true
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	stream.CloseSend()
	// Envoy ignores replies in this mode, so the server sends none: the
	// stream ends without a message.
	if resp, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv = %v, %v; want EOF", resp, err)
	}
	for _, p := range []processor.Phase{processor.PhaseRequestHeaders, processor.PhaseResponseHeaders} {
		if got := testutil.ToFloat64(h.metrics.Message(p, processor.OutcomeIgnored)); got != 1 {
			t.Errorf("ignored %s counted %v times", p, got)
		}
	}
}

// failingEngine fails like a session store that is down.
type failingEngine struct{}

var errDown = errors.New("store down")

func (failingEngine) Expand(context.Context, *sessions.Request, *sessions.Exchange) error {
	return errDown
}

func (failingEngine) Capture(context.Context, *sessions.Exchange, *sessions.Response) (sessions.ResponseEdit, error) {
	return sessions.ResponseEdit{}, errDown
}

func TestStoreFailureFailsClosed(t *testing.T) {
	called := false
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		w.Header().Add("Set-Cookie", "sid=1")
	})
	h := newHarnessWithEngine(t, nil, failingEngine{}, backend)
	browser := envoytest.NewBrowser(h.filter)
	resp, body := get(t, browser, "https://app.test/")
	if called || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" ||
		len(resp.Header.Values("Set-Cookie")) != 0 || !strings.Contains(body, "session store unavailable") {
		t.Errorf("called=%v status=%d headers=%v body=%q", called, resp.StatusCode, resp.Header, body)
	}
	if got := testutil.ToFloat64(h.metrics.Message(processor.PhaseRequestHeaders, processor.OutcomeUnavailable)); got != 1 {
		t.Errorf("unavailable counted %v", got)
	}
}

func TestMetricsRegister(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := processor.NewMetrics().Register(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	for _, want := range []string{"proxysession_messages_total", "proxysession_processing_seconds", "proxysession_streams_active", "proxysession_stream_errors_total", "proxysession_bad_input_total"} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s not registered: %v", want, names)
		}
	}
}
