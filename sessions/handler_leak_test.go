package sessions

import (
	"bufio"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
	"time"
)

// These tests drive SessionHandler with real clients, net/http's and a
// raw TCP one that reads the bytes on the wire, and check that no backend
// Set-Cookie gets out by any path: upgrades, 1xx responses, trailers,
// panics, non-canonical header keys.

// leakCache returns a cache whose session cookie works over plain http.
// Its logger discards: hijacked connections outlive their tests' logs.
func leakCache(t *testing.T) *Cache {
	return newTestCache(t, Config{CookieName: sessionCookie, InsecureCookie: true, Logger: discardLogger()})
}

// secret returns a random cookie value that must never be on the wire.
func secret() string { return "SECRET" + rand.Text() }

// cookieEcho answers /cookies with the Cookie header the backend got, so
// a test can see what the jar holds.
func cookieEcho(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cookies" {
			io.WriteString(w, r.Header.Get("Cookie"))
			return
		}
		next(w, r)
	}
}

// setCookieLines returns the Set-Cookie lines, in any case, of raw HTTP
// bytes: header or trailer fields.
func setCookieLines(wire string) (session, backend []string) {
	for line := range strings.SplitSeq(wire, "\n") {
		name, value, ok := strings.Cut(strings.TrimRight(line, "\r"), ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Set-Cookie") {
			continue
		}
		if value = strings.TrimSpace(value); strings.HasPrefix(value, sessionCookie+"=") {
			session = append(session, value)
		} else {
			backend = append(backend, value)
		}
	}
	return session, backend
}

// checkWire fails the test if the wire bytes hold a backend Set-Cookie
// or any of the secrets, and returns the session cookie set, if any.
func checkWire(t *testing.T, wire string, secrets ...string) *http.Cookie {
	t.Helper()
	session, backend := setCookieLines(wire)
	if len(backend) > 0 {
		t.Errorf("backend Set-Cookie on the wire: %q", backend)
	}
	for _, s := range secrets {
		if strings.Contains(wire, s) {
			t.Errorf("backend cookie value on the wire:\n%s", wire)
		}
	}
	if len(session) == 0 {
		return nil
	}
	c, err := http.ParseSetCookie(session[len(session)-1])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawRequest sends a request over a new TCP connection and returns the
// connection and a reader of its responses.
func rawRequest(t *testing.T, server *httptest.Server, request string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// rawGet sends a GET with Connection: close and returns all the bytes the
// server sends back, 1xx responses and trailers included.
func rawGet(t *testing.T, server *httptest.Server, path string, header ...string) string {
	t.Helper()
	_, br := rawRequest(t, server, "GET "+path+" HTTP/1.1\r\nHost: "+server.Listener.Addr().String()+
		"\r\nConnection: close\r\n"+strings.Join(header, "")+"\r\n")
	b, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading the response: %v (got %q)", err, b)
	}
	return string(b)
}

// readHead reads one response head off br.
func readHead(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			t.Fatalf("reading a response head: %v (got %q)", err, head.String())
		}
		if line == "\r\n" || line == "\n" {
			return head.String()
		}
	}
}

// jarCookies asks the backend, through the session layer, which cookies
// the session c sends it.
func jarCookies(t *testing.T, server *httptest.Server, c *http.Cookie) string {
	t.Helper()
	if c == nil {
		t.Fatal("no session cookie was set")
	}
	req, err := http.NewRequest(http.MethodGet, server.URL+"/cookies", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(c)
	resp, err := server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func reverseProxy(t *testing.T, backend http.Handler) http.Handler {
	t.Helper()
	server := httptest.NewServer(backend)
	t.Cleanup(server.Close)
	u, err := url.Parse(server.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ErrorLog = nil
	return p
}

// hijack hijacks the connection or fails the test.
func hijack(t *testing.T, w http.ResponseWriter) (net.Conn, *bufio.ReadWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		panic(http.ErrAbortHandler)
	}
	return conn, brw
}

// echo copies the client's bytes back until the client closes.
func echo(conn net.Conn, brw *bufio.ReadWriter) {
	defer conn.Close()
	io.Copy(conn, brw.Reader)
}

// TestUpgradeCookiesCaptured: a 101 Switching Protocols head written on a
// hijacked connection (by httputil.ReverseProxy, or by the handler
// itself) has its Set-Cookie fields captured into the session and
// replaced by the session cookie; the upgraded protocol's bytes pass.
func TestUpgradeCookiesCaptured(t *testing.T) {
	ws1, ws2 := secret(), secret()
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Set-Cookie: ws=" + ws1 + "; Path=/\r\nset-cookie: ws2=" + ws2 + "\r\n\r\n"
	upgrader := func(write func(conn net.Conn, brw *bufio.ReadWriter)) http.Handler {
		return cookieEcho(func(w http.ResponseWriter, r *http.Request) {
			conn, brw := hijack(t, w)
			write(conn, brw)
			echo(conn, brw)
		})
	}
	tests := []struct {
		name    string
		handler http.Handler
		extra   string // bytes written in the same write as the head
	}{
		{"reverse proxy", reverseProxy(t, upgrader(func(conn net.Conn, brw *bufio.ReadWriter) {
			brw.WriteString(head)
			brw.Flush()
		})), ""},
		{"handler, buffered writer", upgrader(func(conn net.Conn, brw *bufio.ReadWriter) {
			brw.WriteString(head)
			brw.Flush()
		}), ""},
		{"handler, conn, a byte at a time", upgrader(func(conn net.Conn, brw *bufio.ReadWriter) {
			for i := range len(head) {
				conn.Write([]byte{head[i]})
			}
		}), ""},
		{"handler, head and data in one write", upgrader(func(conn net.Conn, brw *bufio.ReadWriter) {
			io.WriteString(conn, head+"hello")
		}), "hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(c.SessionHandler(tt.handler, nil))
			defer server.Close()

			t.Run("raw", func(t *testing.T) {
				conn, br := rawRequest(t, server, "GET /ws HTTP/1.1\r\nHost: "+server.Listener.Addr().String()+
					"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				got := readHead(t, br)
				if !strings.HasPrefix(got, "HTTP/1.1 101 ") {
					t.Fatalf("head = %q", got)
				}
				session := checkWire(t, got, ws1, ws2)
				io.WriteString(conn, "ping")
				want := tt.extra + "ping"
				b := make([]byte, len(want))
				if _, err := io.ReadFull(br, b); err != nil || string(b) != want {
					t.Errorf("upgraded connection: read %q, %v; want %q", b, err, want)
				}
				if got := jarCookies(t, server, session); !strings.Contains(got, "ws="+ws1) || !strings.Contains(got, "ws2="+ws2) {
					t.Errorf("backend got Cookie %q, want the upgrade's cookies", got)
				}
			})
			t.Run("net/http", func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodGet, server.URL+"/ws", nil)
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
				resp, err := server.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("status = %d", resp.StatusCode)
				}
				cookies := resp.Cookies()
				if len(cookies) != 1 || cookies[0].Name != sessionCookie {
					t.Errorf("client got cookies %v, want only the session cookie", cookies)
				}
				rwc := resp.Body.(io.ReadWriteCloser)
				io.WriteString(rwc, "ping")
				want := tt.extra + "ping"
				b := make([]byte, len(want))
				if _, err := io.ReadFull(rwc, b); err != nil || string(b) != want {
					t.Errorf("upgraded connection: read %q, %v; want %q", b, err, want)
				}
			})
		})
	}
}

// TestHijackedHeads: the heads a handler writes on a hijacked connection
// are edited, or the connection is closed without a byte when a head
// cannot be vouched for.
func TestHijackedHeads(t *testing.T) {
	s1, s2 := secret(), secret()
	tests := []struct {
		name string
		wire string
		// want is what the client must get, the session's fields
		// aside; empty: the connection closes without a byte.
		want []string
		jar  string // the cookie the session must hold
	}{
		{"103 then 101", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nSet-Cookie: early=" + s1 +
			"\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSet-Cookie: ws=" + s2 + "\r\n\r\nws",
			[]string{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
				"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"}, "ws=" + s2},
		{"final response, bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\nConnection: keep-alive\nSet-Cookie: fin=" + s1 + "\n\nOK",
			[]string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"}, "fin=" + s1},
		{"binding headers", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nProxysession-User: alice\r\nproxysession-SID: x\r\nPROXYSESSION-LOGOUT: user\r\nProxysession-Rotate: 1\r\nConnection: Upgrade\r\nSet-Cookie: ws=" + s2 + "\r\n\r\n",
			[]string{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"}, "ws=" + s2},
		{"garbage", "garbage\r\n\r\n", nil, ""},
		{"no status code", "HTTP/1.1 OK\r\n\r\n", nil, ""},
		{"too large", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Big: " + strings.Repeat("a", 70<<10), nil, ""},
		{"upgrade to h2c", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", nil, ""},
		{"bare CR", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-A: 1\rSet-Cookie: leak=" + s1 + "\r\n\r\n", nil, ""},
		{"obsolete line folding", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-A: 1\r\n Set-Cookie: leak=" + s1 + "\r\n\r\n", nil, ""},
		{"space before colon", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSet-Cookie : leak=" + s1 + "\r\n\r\n", nil, ""},
		{"chunked final response", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\nSet-Cookie: tr=" + s1 + "\r\n\r\n", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(c.SessionHandler(cookieEcho(func(w http.ResponseWriter, r *http.Request) {
				conn, brw := hijack(t, w)
				defer conn.Close()
				brw.WriteString(tt.wire)
				brw.Flush()
				// Hold the connection until the client or the filter
				// closes it: a closed connection must be the filter's.
				io.Copy(io.Discard, brw.Reader)
			}), nil))
			defer server.Close()

			conn, br := rawRequest(t, server, "GET /ws HTTP/1.1\r\nHost: "+server.Listener.Addr().String()+
				"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			if tt.want == nil {
				b, err := io.ReadAll(br)
				if err != nil || len(b) > 0 {
					t.Errorf("client got %q, %v; want the connection closed without a byte", b, err)
				}
				return
			}
			var session *http.Cookie
			for i, want := range tt.want {
				head := readHead(t, br)
				if s := checkWire(t, head, s1, s2); s != nil {
					session = s
					if i != len(tt.want)-1 {
						t.Errorf("an informational response set the session cookie")
					}
				}
				var got strings.Builder
				for line := range strings.SplitAfterSeq(head, "\r\n") {
					if !strings.HasPrefix(line, "Set-Cookie: "+sessionCookie+"=") && !strings.HasPrefix(line, "Cache-Control: ") {
						got.WriteString(line)
					}
				}
				if got.String() != want {
					t.Errorf("head %d = %q, want %q", i, got.String(), want)
				}
			}
			conn.Close()
			if jar := jarCookies(t, server, session); jar != tt.jar {
				t.Errorf("backend got Cookie %q, want %q", jar, tt.jar)
			}
		})
	}
}

// TestHijackAfterHeader: once a final HTTP response header is out, the
// connection is handed over only if the protocol was switched.
func TestHijackAfterHeader(t *testing.T) {
	c := leakCache(t)
	ws := secret()
	server := httptest.NewServer(c.SessionHandler(cookieEcho(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			w.WriteHeader(http.StatusOK)
			if _, _, err := http.NewResponseController(w).Hijack(); !errors.Is(err, errHijackAfterHeader) {
				t.Errorf("hijack after a 200: err = %v", err)
			}
			return
		}
		// As github.com/coder/websocket does: headers, 101, then hijack.
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Set-Cookie", "ws="+ws)
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw := hijack(t, w)
		echo(conn, brw)
	}), nil))
	defer server.Close()

	if got := rawGet(t, server, "/ok"); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Errorf("response = %q", got)
	}
	conn, br := rawRequest(t, server, "GET /ws HTTP/1.1\r\nHost: "+server.Listener.Addr().String()+
		"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	session := checkWire(t, readHead(t, br), ws)
	io.WriteString(conn, "ping")
	b := make([]byte, 4)
	if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
		t.Errorf("upgraded connection: read %q, %v", b, err)
	}
	if got := jarCookies(t, server, session); got != "ws="+ws {
		t.Errorf("backend got Cookie %q", got)
	}
}

// TestInformationalResponsesCarryNoCookies: net/http sends the header map
// with every 1xx response; the handler's cookies must wait for the final
// response, where they are captured.
func TestInformationalResponsesCarryNoCookies(t *testing.T) {
	early, final := secret(), secret()
	tests := []struct {
		name    string
		handler http.Handler
		jar     string // the cookies the session must hold
	}{
		{"reverse proxy", reverseProxy(t, cookieEcho(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.Header().Set("Set-Cookie", "early="+early)
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			w.Header().Set("Set-Cookie", "final="+final)
			io.WriteString(w, "OK")
		})), "final=" + final},
		{"handler", cookieEcho(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.Header().Set("Set-Cookie", "early="+early)
			w.Header()["set-cookie"] = []string{"final=" + final}
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "OK")
		}), "early=" + early + "; final=" + final},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(c.SessionHandler(tt.handler, nil))
			defer server.Close()

			t.Run("raw", func(t *testing.T) {
				wire := rawGet(t, server, "/")
				hints, rest, ok := strings.Cut(wire, "\r\n\r\n")
				if !ok || !strings.HasPrefix(hints, "HTTP/1.1 103 ") || !strings.HasPrefix(rest, "HTTP/1.1 200 ") {
					t.Fatalf("response = %q", wire)
				}
				if !strings.Contains(hints, "Link: </style.css>; rel=preload") {
					t.Errorf("103 lost its Link: %q", hints)
				}
				if session := checkWire(t, hints, early, final); session != nil {
					t.Errorf("103 set the session cookie")
				}
				session := checkWire(t, rest, early, final)
				if got := jarCookies(t, server, session); got != tt.jar {
					t.Errorf("backend got Cookie %q, want %q", got, tt.jar)
				}
			})
			t.Run("net/http", func(t *testing.T) {
				var hints []textproto.MIMEHeader
				ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
					Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
						hints = append(hints, header)
						return nil
					},
				})
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server.URL, nil)
				resp, err := server.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if len(hints) != 1 || hints[0].Get("Link") == "" || len(hints[0]["Set-Cookie"]) > 0 {
					t.Errorf("1xx headers = %v", hints)
				}
				if cookies := resp.Cookies(); len(cookies) != 1 || cookies[0].Name != sessionCookie {
					t.Errorf("client got cookies %v, want only the session cookie", cookies)
				}
			})
		})
	}
}

// TestTrailersCarryNoCookies: neither a declared Set-Cookie trailer nor
// one under http.TrailerPrefix is sent; other trailers are.
func TestTrailersCarryNoCookies(t *testing.T) {
	tr := secret()
	tests := []struct {
		name    string
		handler http.Handler
	}{
		{"declared", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "Set-Cookie, X-Check")
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("Set-Cookie", "tr="+tr)
			w.Header().Set("X-Check", "ok")
		})},
		{"declared in lower case", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Trailer"] = []string{"X-Check", "set-cookie"}
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("Set-Cookie", "tr="+tr)
			w.Header().Set("X-Check", "ok")
		})},
		{"trailer prefix", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set(http.TrailerPrefix+"Set-Cookie", "tr="+tr)
			w.Header()[http.TrailerPrefix+"set-cookie"] = []string{"tr2=" + tr}
			w.Header().Set(http.TrailerPrefix+"X-Check", "ok")
		})},
		{"reverse proxy", reverseProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "Set-Cookie, X-Check")
			io.WriteString(w, "body")
			w.Header().Set("Set-Cookie", "tr="+tr)
			w.Header().Set("X-Check", "ok")
		}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(c.SessionHandler(tt.handler, nil))
			defer server.Close()

			t.Run("raw", func(t *testing.T) {
				wire := rawGet(t, server, "/")
				checkWire(t, wire, tr)
				if !strings.Contains(wire, "\r\nX-Check: ok\r\n") {
					t.Errorf("the X-Check trailer is missing: %q", wire)
				}
			})
			t.Run("net/http", func(t *testing.T) {
				resp, err := server.Client().Get(server.URL)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.Trailer.Get("X-Check") != "ok" || len(resp.Trailer["Set-Cookie"]) > 0 || len(resp.Header["Set-Cookie"]) > 0 {
					t.Errorf("header %v, trailer %v", resp.Header, resp.Trailer)
				}
			})
		})
	}
}

// recoverer is an outer recovery middleware that answers 500 after a
// panic, with the headers it set itself.
func recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if recover() != nil {
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, "recovered")
			}
		}()
		w.Header().Set("X-Outer", "1")
		next.ServeHTTP(w, r)
	})
}

// TestPanicLeavesNoCookies: a handler that panics leaves no cookie for an
// outer recovery middleware's response.
func TestPanicLeavesNoCookies(t *testing.T) {
	value := secret()
	tests := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"before writing", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Set-Cookie", "p="+value)
			panic("boom")
		}},
		{"non-canonical key", func(w http.ResponseWriter, r *http.Request) {
			w.Header()["set-cookie"] = []string{"p=" + value}
			panic("boom")
		}},
		{"after a 103", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Set-Cookie", "p="+value)
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			panic("boom")
		}},
		{"trailer", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "Set-Cookie")
			w.Header().Set(http.TrailerPrefix+"Set-Cookie", "p="+value)
			panic("boom")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(recoverer(c.SessionHandler(tt.h, nil)))
			defer server.Close()

			wire := rawGet(t, server, "/")
			if _, final, _ := strings.Cut(wire, "HTTP/1.1 500 "); final == "" {
				t.Fatalf("response = %q", wire)
			}
			if session := checkWire(t, wire, value); session != nil {
				t.Error("a failed response set the session cookie")
			}
			resp, err := server.Client().Get(server.URL)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusInternalServerError || len(resp.Cookies()) > 0 || resp.Header.Get("X-Outer") != "1" {
				t.Errorf("status %d, header %v, trailer %v", resp.StatusCode, resp.Header, resp.Trailer)
			}
		})
	}
}

// TestPanicPropagates: the session layer does not swallow or change a
// panic, http.ErrAbortHandler included.
func TestPanicPropagates(t *testing.T) {
	for _, v := range []any{"boom", http.ErrAbortHandler} {
		c := leakCache(t)
		h := c.SessionHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Set-Cookie", "p=1")
			panic(v)
		}), nil)
		w := httptest.NewRecorder()
		func() {
			defer func() {
				if got := recover(); got != v {
					t.Errorf("recovered %v, want %v", got, v)
				}
			}()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		}()
		if len(w.Header()) > 0 {
			t.Errorf("real header map after a panic: %v", w.Header())
		}
	}
}

// TestNonCanonicalSetCookie: net/http sends a key such as "set-cookie" as
// it is, and clients honour it: it is captured like "Set-Cookie".
func TestNonCanonicalSetCookie(t *testing.T) {
	a, b := secret(), secret()
	tests := []struct {
		name string
		set  func(h http.Header)
		jar  []string
	}{
		{"lower case", func(h http.Header) { h["set-cookie"] = []string{"a=" + a} }, []string{"a=" + a}},
		{"upper case", func(h http.Header) { h["SET-COOKIE"] = []string{"a=" + a} }, []string{"a=" + a}},
		{"with canonical", func(h http.Header) {
			h["Set-Cookie"] = []string{"a=" + a}
			h["set-cookie"] = []string{"b=" + b}
		}, []string{"a=" + a, "b=" + b}},
		{"padded key", func(h http.Header) {
			h["Set-Cookie"] = []string{"a=" + a}
			h["Set-Cookie "] = []string{"b=" + b}
			h["trailer:set-cookie"] = []string{"b=" + b}
		}, []string{"a=" + a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := leakCache(t)
			server := httptest.NewServer(c.SessionHandler(cookieEcho(func(w http.ResponseWriter, r *http.Request) {
				tt.set(w.Header())
				io.WriteString(w, "OK")
			}), nil))
			defer server.Close()

			session := checkWire(t, rawGet(t, server, "/"), a, b)
			got := jarCookies(t, server, session)
			for _, want := range tt.jar {
				if !strings.Contains(got, want) {
					t.Errorf("backend got Cookie %q, want %q in it", got, want)
				}
			}
			client := browserClient(t, server)
			get(t, client, server.URL)
			if cookies := client.Jar.Cookies(mustURL(t, server.URL)); len(cookies) != 1 || cookies[0].Name != sessionCookie {
				t.Errorf("browser holds %v, want only the session cookie", cookies)
			}
		})
	}
}
