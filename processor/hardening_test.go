package processor_test

import (
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
	"github.com/proxysession/proxysession/sessions"
)

// TestSecureCookiesBehindTLSTerminatingProxy: TLS ends at a load balancer,
// so Envoy reports :scheme http and x-forwarded-proto http while the
// browser speaks https. With the default (Secure) session cookie the
// backend's Secure cookies are stored and sent all the same; with an
// insecure session cookie the request's own scheme decides.
func TestSecureCookiesBehindTLSTerminatingProxy(t *testing.T) {
	tests := []struct {
		name      string
		cfg       sessions.Config
		url       string
		wantSent  bool
		wantCount uint64 // secure_from_insecure rejections
	}{
		{name: "default cookie, http last hop", cfg: testConfig, url: "https://app.test", wantSent: true},
		{name: "insecure cookie, plain http", cfg: sessions.Config{InsecureCookie: true, PassThrough: []string{"XSRF-TOKEN"}}, url: "http://app.test", wantCount: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg, demoBackend())
			h.filter.DownstreamScheme = "http"
			browser := envoytest.NewBrowser(h.filter)
			get(t, browser, tt.url+"/login")
			got := backendCookies(t, browser, tt.url+"/echo")
			if sent := len(got) == 1 && strings.Contains(got[0], "sid=alice-"); sent != tt.wantSent {
				t.Errorf("backend saw Cookie %q; want the Secure sid sent: %v", got, tt.wantSent)
			}
			if n := h.cache.Stats().CookiesRejected[sessions.RejectSecureFromInsecure]; n != tt.wantCount {
				t.Errorf("secure_from_insecure = %d, want %d", n, tt.wantCount)
			}
		})
	}
}

// TestHiddenHeadersFailClosed: Envoy's forward_rules can hide Set-Cookie
// or Cookie from proxysession. Backend cookies must then be dropped, not
// reach the browser, and the session cookie must not reach the backend.
func TestHiddenHeadersFailClosed(t *testing.T) {
	t.Run("set-cookie hidden", func(t *testing.T) {
		h := newHarness(t, testConfig, demoBackend())
		h.filter.DisallowedHeaders = []string{"set-cookie"}
		req, _ := http.NewRequest(http.MethodGet, "https://app.test/login", nil)
		resp, err := h.filter.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if sc := resp.Header.Values("Set-Cookie"); len(sc) != 0 {
			t.Errorf("browser got Set-Cookie %q from a response proxysession could not see", sc)
		}
	})
	t.Run("cookie hidden", func(t *testing.T) {
		h := newHarness(t, testConfig, demoBackend())
		browser := envoytest.NewBrowser(h.filter)
		get(t, browser, "https://app.test/login")
		h.filter.DisallowedHeaders = []string{"cookie"}
		if got := backendCookies(t, browser, "https://app.test/echo"); len(got) != 0 {
			t.Errorf("backend saw Cookie %q that proxysession could not see", got)
		}
	})
	t.Run("every response reply removes set-cookie", func(t *testing.T) {
		h := newHarness(t, testConfig, demoBackend())
		stream := openStream(t, h)
		extproctest.Send(t, stream, envoytest.RequestHeaders(":authority", "app.test", ":path", "/", ":method", "GET", ":scheme", "https"))
		resp := extproctest.Send(t, stream, envoytest.ResponseHeaders(":status", "200"))
		if m := resp.GetResponseHeaders().GetResponse().GetHeaderMutation(); !slices.Equal(m.GetRemoveHeaders(), wantRemoved) {
			t.Errorf("mutation %v, want set-cookie removed", m)
		}
	})
}

// TestClearRouteCache: with the option, a request reply that rewrites the
// Cookie header asks Envoy to choose the route again; a reply that leaves
// the header alone does not, and response replies never do.
func TestClearRouteCache(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		srv := extproctest.NewServer(cache, processor.Options{Logger: slog.New(slog.DiscardHandler), ClearRouteCache: enabled})
		t.Cleanup(srv.Close)
		exchange := func(cookie string, setCookie ...string) (req, resp *extprocv3.CommonResponse) {
			stream, err := srv.Client.Process(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			kv := []string{":authority", "app.test", ":path", "/", ":method", "GET", ":scheme", "https"}
			if cookie != "" {
				kv = append(kv, "cookie", cookie)
			}
			req = extproctest.Send(t, stream, envoytest.RequestHeaders(kv...)).GetRequestHeaders().GetResponse()
			rkv := []string{":status", "200"}
			for _, sc := range setCookie {
				rkv = append(rkv, "set-cookie", sc)
			}
			resp = extproctest.Send(t, stream, envoytest.ResponseHeaders(rkv...)).GetResponseHeaders().GetResponse()
			return req, resp
		}
		_, login := exchange("theme=dark", "sid=1")
		var session string
		for _, h := range login.GetHeaderMutation().GetSetHeaders() {
			if v := string(h.GetHeader().GetRawValue()); strings.HasPrefix(v, sessions.DefaultCookieName+"=") {
				session, _, _ = strings.Cut(v, ";")
			}
		}
		if session == "" {
			t.Fatal("no session cookie issued")
		}
		rewritten, resp := exchange(session + "; theme=dark")
		untouched, _ := exchange("theme=dark")
		if got := rewritten.GetClearRouteCache(); got != enabled {
			t.Errorf("ClearRouteCache %v: rewritten Cookie header asks to clear: %v", enabled, got)
		}
		if untouched.GetClearRouteCache() || resp.GetClearRouteCache() || login.GetClearRouteCache() {
			t.Errorf("ClearRouteCache %v: cleared without a Cookie rewrite, or on a response", enabled)
		}
	}
}
