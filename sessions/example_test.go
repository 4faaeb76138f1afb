package sessions_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/proxysession/proxysession/sessions"
)

// A proxy that is not a Go handler calls Expand for each request and
// Capture for its response. Here the backend sets a cookie at login; the
// browser gets a session cookie instead, and the next request takes the
// backend's cookie back to it.
func ExampleNew() {
	c, err := sessions.New(sessions.Config{
		Lifetime:    8 * time.Hour,
		IdleTimeout: 30 * time.Minute,
		Logger:      slog.New(slog.DiscardHandler),
		Now:         func() time.Time { return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// The login: no session yet, and the backend sets a cookie.
	var x sessions.Exchange
	login := &sessions.Request{Scheme: "https", Host: "app.example.com", Path: "/login", Method: http.MethodPost}
	if err := c.Expand(ctx, login, &x); err != nil {
		log.Fatal(err) // the store failed: answer 503
	}
	edit, err := c.Capture(ctx, &x, &sessions.Response{
		SetCookie: []string{"sid=s3cr3t; Path=/; HttpOnly; Max-Age=3600"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("remove the backend's Set-Cookie:", edit.RemoveSetCookie)
	fmt.Println("Set-Cookie:", withoutValue(edit.SetCookie[0]))
	fmt.Println("Cache-Control:", edit.CacheControl)

	// The next request carries the session cookie, and a cookie of the
	// browser's own.
	sessionCookie, _, _ := strings.Cut(edit.SetCookie[0], ";")
	next := &sessions.Request{Scheme: "https", Host: "app.example.com", Path: "/account",
		Cookies: []string{sessionCookie + "; theme=dark"}}
	if err := c.Expand(ctx, next, &x); err != nil {
		log.Fatal(err)
	}
	fmt.Println("the backend gets Cookie:", x.Cookie)
	// Output:
	// remove the backend's Set-Cookie: true
	// Set-Cookie: __Host-proxysession=…; Path=/; Max-Age=28800; HttpOnly; Secure; SameSite=Lax
	// Cache-Control: private
	// the backend gets Cookie: sid=s3cr3t; theme=dark
}

// A proxy that is a Go handler wraps it with SessionHandler.
func ExampleCache_SessionHandler() {
	c, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "s3cr3t", Path: "/", HttpOnly: true})
			return
		}
		fmt.Println("the backend gets Cookie:", r.Header.Get("Cookie"))
	})
	h := c.SessionHandler(backend, nil)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "https://app.example.com/login", nil))
	setCookie := rec.Result().Header["Set-Cookie"]
	fmt.Println("the browser gets Set-Cookie:", withoutValue(setCookie[0]))

	req := httptest.NewRequest(http.MethodGet, "https://app.example.com/", nil)
	sessionCookie, _, _ := strings.Cut(setCookie[0], ";")
	req.Header.Set("Cookie", sessionCookie)
	h.ServeHTTP(httptest.NewRecorder(), req)
	// Output:
	// the browser gets Set-Cookie: __Host-proxysession=…; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=Lax
	// the backend gets Cookie: sid=s3cr3t
}

// withoutValue replaces the random value of a session cookie's
// Set-Cookie with an ellipsis.
func withoutValue(setCookie string) string {
	name, rest, _ := strings.Cut(setCookie, "=")
	_, attrs, _ := strings.Cut(rest, ";")
	return name + "=…;" + attrs
}
