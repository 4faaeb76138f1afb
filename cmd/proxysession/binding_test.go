package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHTTPProxyBindingHeadersNeverLeak: in reverse-proxy mode, the
// backend's binding headers never reach the browser, with binding off
// or on; with it on, a login rotates the session id, the backend learns
// the handle (never the browser's own), and the logout header ends the
// session. Nothing of the user id reaches the logs or metrics.
func TestHTTPProxyBindingHeadersNeverLeak(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "binding.key")
	if err := os.WriteFile(keyFile, bytes.Repeat([]byte("k"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	var seenHandle []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenHandle = append(seenHandle, r.Header.Get("Proxysession-Session-Handle"))
		switch r.URL.Path {
		case "/start":
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "42", Path: "/"})
		case "/login":
			w.Header().Set("Proxysession-User", "user-secret-alice")
			w.Header()["proxysession-sid"] = []string{"idp-sid-secret"}
		case "/logout":
			w.Header().Set("PROXYSESSION-LOGOUT", "user")
		}
		w.Header().Set("Proxysession-Rotate", "")
		w.Write([]byte(r.Header.Get("Cookie")))
	}))
	t.Cleanup(up.Close)
	for _, args := range [][]string{nil, {"-binding-key-file", keyFile}} {
		p := startProxy(t, up.URL, args...)
		b := newCookieBrowser(nil)
		for _, path := range []string{"/start", "/login", "/page", "/logout", "/page"} {
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+path, nil)
			req.Header.Set("Proxysession-Session-Handle", "spoofed")
			before := b.cookies["__Host-proxysession"]
			resp, _ := b.do(t, req)
			for k := range resp.Header {
				if strings.HasPrefix(strings.ToLower(k), "proxysession-") {
					t.Errorf("%v %s: %s reached the browser", args, path, k)
				}
			}
			if args != nil && path == "/login" && (b.cookies["__Host-proxysession"] == before || before == "") {
				t.Errorf("login did not rotate the session id")
			}
		}
		if args != nil {
			if b.cookies["__Host-proxysession"] != "" {
				t.Error("the session survived the logout header")
			}
		}
		for _, h := range seenHandle {
			// With binding off the header means nothing and is left alone.
			if h == "spoofed" && args != nil {
				t.Error("the browser's handle header reached the backend")
			}
		}
		if args != nil && (len(seenHandle) < 3 || seenHandle[2] == "") {
			t.Errorf("the backend got no handle after login: %q", seenHandle)
		}
		seenHandle = nil
		_, metrics := httpGet(t, "http://"+p.adminAddr+"/metrics")
		for _, secret := range []string{"user-secret-alice", "idp-sid-secret"} {
			if strings.Contains(p.logs.String(), secret) || strings.Contains(metrics, secret) {
				t.Errorf("%q in the logs or metrics", secret)
			}
		}
		if args != nil {
			for _, want := range []string{"proxysession_session_rotations_total 1", `proxysession_sessions_ended_total{reason="user_logout"} 1`} {
				if !strings.Contains(metrics, want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
		}
	}
}
