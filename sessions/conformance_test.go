package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/browsertest"
)

// conformanceDir finds the RFC 6265bis cookie test data (see its README):
// $PROXYSESSION_CONFORMANCE_DIR, else ../shared beside the repository.
func conformanceDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PROXYSESSION_CONFORMANCE_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared", "testdata", "cookies-6265bis")
	}
	if _, err := os.Stat(filepath.Join(dir, "parser.json")); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("conformance data not found in %s (set PROXYSESSION_CONFORMANCE_DIR)", dir)
	}
	return dir
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// skippedParserCases were not updated to RFC 6265bis (data README).
var skippedParserCases = map[string]bool{"0024": true, "0025": true, "0026": true, "0028": true}

// TestConformanceParser runs every enabled case of parser.json through the
// engine: the response from http://home.example.org:8888/cookie-parser?NAME
// sets the cookies, and the follow-up request must carry exactly the
// expected Cookie header.
func TestConformanceParser(t *testing.T) {
	dir := conformanceDir(t)
	var cases []struct {
		Test     string   `json:"test"`
		Received []string `json:"received"`
		SentTo   string   `json:"sent-to"`
		Sent     []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"sent"`
	}
	readJSON(t, filepath.Join(dir, "parser.json"), &cases)

	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	past, future := now.AddDate(-1, 0, 0).Format(http.TimeFormat), now.AddDate(1, 0, 0).Format(http.TimeFormat)
	ran := 0
	for _, tc := range cases {
		if strings.HasPrefix(tc.Test, "DISABLED") || skippedParserCases[tc.Test] {
			continue
		}
		ran++
		t.Run(tc.Test, func(t *testing.T) {
			// An insecure session cookie: over http, only then does the request's
			// own scheme decide, as in the browser these cases were written for.
			c := newTestCache(t, Config{InsecureCookie: true, Now: func() time.Time { return now }})
			name := strings.ToLower(tc.Test)
			base, err := url.Parse("http://home.example.org:8888/cookie-parser?" + name)
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, l := range tc.Received {
				l = strings.ReplaceAll(l, "Expires=PAST", "Expires="+past)
				l = strings.ReplaceAll(l, "expires=PAST", "expires="+past)
				l = strings.ReplaceAll(l, "Expires=FUTURE", "Expires="+future)
				l = strings.ReplaceAll(l, "expires=FUTURE", "expires="+future)
				lines = append(lines, l)
			}
			jar := exchange(t, c, base, nil, lines)

			target := "http://home.example.org:8888/cookie-parser-result?" + name
			if tc.SentTo != "" {
				target = tc.SentTo
			}
			u, err := base.Parse(target)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, s := range tc.Sent {
				if s.Name == "" {
					want = append(want, s.Value)
				} else {
					want = append(want, s.Name+"="+s.Value)
				}
			}
			x := expand(t, c, u, jar)
			if got := x.Cookie; got != strings.Join(want, "; ") {
				t.Errorf("received %q\nCookie to %s = %q\nwant          %q", tc.Received, u, got, strings.Join(want, "; "))
			}
		})
	}
	if ran != 214 {
		t.Errorf("ran %d enabled cases, want 214", ran)
	}
}

// TestConformanceDates runs dates.json through the cookie-date parser.
func TestConformanceDates(t *testing.T) {
	dir := conformanceDir(t)
	var cases []struct {
		Test     string  `json:"test"`
		Expected *string `json:"expected"`
	}
	readJSON(t, filepath.Join(dir, "dates.json"), &cases)
	if len(cases) != 15 {
		t.Errorf("dates.json has %d cases, want 15", len(cases))
	}
	for _, tc := range cases {
		got, ok := parseCookieDate(tc.Test)
		switch {
		case tc.Expected == nil && ok:
			t.Errorf("parseCookieDate(%q) = %v, want failure", tc.Test, got)
		case tc.Expected != nil && !ok:
			t.Errorf("parseCookieDate(%q) failed, want %s", tc.Test, *tc.Expected)
		case tc.Expected != nil && got.Format(http.TimeFormat) != *tc.Expected:
			t.Errorf("parseCookieDate(%q) = %s, want %s", tc.Test, got.Format(http.TimeFormat), *tc.Expected)
		}
	}
}

// browserJar is the test's stand-in for a browser.
type browserJar = browsertest.BrowserJar

func requestFor(u *url.URL, browser browserJar) *Request {
	return &Request{Scheme: u.Scheme, Host: u.Host, Path: u.RequestURI(), Method: http.MethodGet, Cookies: browser.Header()}
}

// expand runs the request half of an exchange.
func expand(t *testing.T, c *Cache, u *url.URL, browser browserJar) *Exchange {
	t.Helper()
	var x Exchange
	if err := c.Expand(context.Background(), requestFor(u, browser), &x); err != nil {
		t.Fatalf("Expand: %v", err)
	}
	return &x
}

// exchange runs one request to u whose response sets setCookies, and
// returns the browser jar updated with what the proxy let through.
func exchange(t *testing.T, c *Cache, u *url.URL, browser browserJar, setCookies []string) browserJar {
	t.Helper()
	if browser == nil {
		browser = browserJar{}
	}
	x := expand(t, c, u, browser)
	edit, err := c.Capture(context.Background(), x, &Response{SetCookie: setCookies})
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	browser.Apply(t, edit.SetCookie)
	return browser
}

// newTestCache returns a Cache whose logs go to the test log.
func newTestCache(t testing.TB, cfg Config) *Cache {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
