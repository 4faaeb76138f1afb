package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/processor/envoytest"
)

// proxyInstance is a proxysession started through run in reverse-proxy
// mode.
type proxyInstance struct {
	*instance
	httpAddr string // host:port of -http-addr
}

// startProxy runs proxysession with -http-addr on loopback, proxying to
// upstream, with gRPC off unless args name -grpc-addr.
func startProxy(t *testing.T, upstream string, args ...string) *proxyInstance {
	t.Helper()
	type addrs struct{ grpc, admin, http net.Addr }
	ready := make(chan addrs, 1)
	var got addrs
	inst := &instance{draining: make(chan struct{}), done: make(chan error, 1), logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	inst.cancel = cancel
	h := hooks{
		listening:     func(g, a net.Addr) { got.grpc, got.admin = g, a },
		httpListening: func(a net.Addr) { got.http = a; ready <- got },
		draining:      func() { close(inst.draining) },
	}
	args = append([]string{"-admin-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0", "-upstream", upstream, "-log-level", "debug"}, args...)
	if !strings.Contains(strings.Join(args, " "), "-grpc-addr") {
		args = append(args, "-grpc-addr", "off")
	}
	go func() { inst.done <- run(ctx, args, io.Discard, inst.logs, h) }()
	p := &proxyInstance{instance: inst}
	select {
	case a := <-ready:
		p.adminAddr, p.httpAddr = a.admin.String(), a.http.String()
		if a.grpc != nil {
			p.grpcAddr = a.grpc.String()
		}
	case err := <-inst.done:
		t.Fatalf("run: %v\n%s", err, inst.logs)
	}
	t.Cleanup(func() {
		cancel()
		<-inst.done
		if t.Failed() {
			t.Logf("proxysession logs:\n%s", inst.logs)
		}
	})
	return p
}

// cookieBrowser keeps cookies by name, like a browser for one site,
// sending Secure ones over http too (127.0.0.1 is a secure context).
type cookieBrowser struct {
	client  *http.Client
	cookies map[string]string
	// setCookies collects every Set-Cookie the browser received.
	setCookies []string
}

func newCookieBrowser(client *http.Client) *cookieBrowser {
	if client == nil {
		client = &http.Client{}
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cookieBrowser{client: client, cookies: map[string]string{}}
}

func (b *cookieBrowser) do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	for name, value := range b.cookies {
		req.AddCookie(&http.Cookie{Name: name, Value: value})
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	b.take(resp.Header)
	return resp, string(body)
}

func (b *cookieBrowser) take(h http.Header) {
	b.setCookies = append(b.setCookies, h.Values("Set-Cookie")...)
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c.Value
		}
	}
}

func (b *cookieBrowser) get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.do(t, req)
}

// checkOnlySessionCookie fails unless every Set-Cookie the browser got
// is the session cookie's.
func (b *cookieBrowser) checkOnlySessionCookie(t *testing.T) {
	t.Helper()
	for _, sc := range b.setCookies {
		if !strings.HasPrefix(sc, "__Host-proxysession=") {
			t.Errorf("a backend Set-Cookie reached the client: %q", sc)
		}
	}
}

// echoUpstream answers /login with a cookie and anything else with the
// request's Cookie header.
func echoUpstream(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(loginBackend())
	t.Cleanup(srv.Close)
	return srv
}

func TestHTTPProxyEndToEnd(t *testing.T) {
	up := echoUpstream(t)
	p := startProxy(t, up.URL)
	b := newCookieBrowser(nil)
	if resp, _ := b.get(t, "http://"+p.httpAddr+"/login?token=s3cr3t"); resp.StatusCode != http.StatusOK || b.cookies["__Host-proxysession"] == "" {
		t.Fatalf("login: %s, cookies %v", resp.Status, b.setCookies)
	}
	if _, body := b.get(t, "http://"+p.httpAddr+"/page"); body != "sid=42" {
		t.Errorf("upstream saw Cookie %q, want sid=42 (and never the session cookie)", body)
	}
	b.checkOnlySessionCookie(t)
	_, metrics := httpGet(t, "http://"+p.adminAddr+"/metrics")
	for _, want := range []string{`proxysession_http_requests_total{code="200"} 2`, "proxysession_sessions_created_total 1", "proxysession_http_request_duration_seconds_count 2"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _ := httpGet(t, "http://"+p.adminAddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d", code)
	}
	logs := p.logs.String()
	for _, want := range []string{"msg=\"http request\" method=GET path=/login proto=HTTP/1.1 status=200", "grpc=off"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
	for _, secret := range []string{"sid=42", "s3cr3t", b.cookies["__Host-proxysession"]} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs hold %q", secret)
		}
	}
}

// TestHTTPProxyBesideGRPC: one process serves ext_proc and the reverse
// proxy on one store: a session made through one is used through the
// other.
func TestHTTPProxyBesideGRPC(t *testing.T) {
	up := echoUpstream(t)
	p := startProxy(t, up.URL, "-grpc-addr", "127.0.0.1:0")
	b := newCookieBrowser(nil)
	b.get(t, "http://"+p.httpAddr+"/login")
	id := b.cookies["__Host-proxysession"]
	if id == "" {
		t.Fatal("no session cookie")
	}
	f := &envoytest.Filter{Client: extprocv3.NewExternalProcessorClient(dial(t, p.grpcAddr, nil)), Backend: loginBackend(), MessageTimeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "https://app.test/page", nil)
	req.Host = p.httpAddr // the session's cookies are host-only
	req.AddCookie(&http.Cookie{Name: "__Host-proxysession", Value: id})
	resp, err := f.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "sid=42" {
		t.Errorf("through ext_proc the backend saw %q, want the session made through the reverse proxy", body)
	}
}

func TestHTTPProxyStreaming(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Add("Set-Cookie", "stream=1; Path=/")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer up.Close()
	defer close(release)
	p := startProxy(t, up.URL)
	resp, err := http.Get("http://" + p.httpAddr + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if !strings.HasPrefix(sc, "__Host-proxysession=") {
			t.Errorf("backend Set-Cookie leaked on a stream: %q", sc)
		}
	}
	if len(resp.Header.Values("Set-Cookie")) != 1 {
		t.Errorf("Set-Cookie %q, want the session cookie", resp.Header.Values("Set-Cookie"))
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "data: first\n" {
			t.Errorf("first line %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not arrive while the upstream was still streaming")
	}
}

func TestHTTPProxyWebSocket(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			io.WriteString(w, r.Header.Get("Cookie"))
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSet-Cookie: ws=1; Path=/\r\nX-Forwarded-For-Seen: %s\r\n\r\n", r.Header.Get("X-Forwarded-For"))
		rw.Flush()
		io.Copy(conn, rw) // echo
	}))
	defer up.Close()
	p := startProxy(t, up.URL)

	conn, err := net.Dial("tcp", p.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /socket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", p.httpAddr)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("upgrade: %s %v", resp.Status, resp.Header)
	}
	if got := resp.Header.Get("X-Forwarded-For-Seen"); got != "127.0.0.1" {
		t.Errorf("upstream saw X-Forwarded-For %q on the upgrade", got)
	}
	b := newCookieBrowser(nil)
	b.take(resp.Header)
	b.checkOnlySessionCookie(t)
	if b.cookies["__Host-proxysession"] == "" {
		t.Fatalf("the 101's cookie was not captured into a session: %q", resp.Header.Values("Set-Cookie"))
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if _, body := b.get(t, "http://"+p.httpAddr+"/page"); body != "ws=1" {
		t.Errorf("after the upgrade the upstream saw Cookie %q, want ws=1", body)
	}
	// The access log line is written when the upgraded connection ends.
	conn.Close()
	if !waitLog(p, "path=/socket proto=HTTP/1.1 status=101") {
		t.Error("no access log line for the upgrade")
	}
}

// waitLog waits a little for s to appear in p's logs.
func waitLog(p *proxyInstance, s string) bool {
	for range 50 {
		if strings.Contains(p.logs.String(), s) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestHTTPProxyForwardedHeaders(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s xff=%s xfh=%s xfp=%s fwd=%s", r.Host, r.Header.Get("X-Forwarded-For"),
			r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("Forwarded"))
	}))
	defer up.Close()
	upHost := strings.TrimPrefix(up.URL, "http://")
	for _, tt := range []struct {
		name string
		args []string
		want string // with %s for the proxy's address
	}{
		{"client's headers replaced", nil, "host=" + upHost + " xff=127.0.0.1 xfh=%s xfp=http fwd="},
		{"trusted", []string{"-trust-forwarded-headers"}, "host=" + upHost + " xff=203.0.113.7, 127.0.0.1 xfh=app.example xfp=https fwd="},
		{"host preserved", []string{"-preserve-host"}, "host=%s xff=127.0.0.1 xfh=%s xfp=http fwd="},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, up.URL, tt.args...)
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+"/", nil)
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			req.Header.Set("X-Forwarded-Host", "app.example")
			req.Header.Set("X-Forwarded-Proto", "https")
			req.Header.Set("Forwarded", "for=198.51.100.1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := strings.ReplaceAll(tt.want, "%s", p.httpAddr)
			if string(body) != want {
				t.Errorf("upstream saw\n  %s\nwant\n  %s", body, want)
			}
		})
	}
}

func TestHTTPProxyUpstreamFailure(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + l.Addr().String()
		l.Close()
		p := startProxy(t, dead)
		code, body := httpGet(t, "http://"+p.httpAddr+"/x")
		if code != http.StatusBadGateway || body != "502 Bad Gateway\n" {
			t.Errorf("= %d %q, want 502 without details", code, body)
		}
		if !waitLog(p, "upstream_error=unreachable") || !strings.Contains(p.logs.String(), "connection refused") {
			t.Error("the logs do not say why")
		}
		if _, metrics := httpGet(t, "http://"+p.adminAddr+"/metrics"); !strings.Contains(metrics, `proxysession_upstream_errors_total{kind="unreachable"} 1`) {
			t.Error("upstream error not counted")
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer up.Close()
		defer close(release)
		p := startProxy(t, up.URL, "-upstream-timeout", "200ms")
		start := time.Now()
		code, body := httpGet(t, "http://"+p.httpAddr+"/slow")
		if code != http.StatusGatewayTimeout || body != "504 Gateway Timeout\n" {
			t.Errorf("= %d %q, want 504", code, body)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("answered after %v", d)
		}
		if !waitLog(p, "upstream_error=timeout") {
			t.Error("no upstream_error=timeout in the access log")
		}
	})
}

func TestHTTPProxyHeaderLimit(t *testing.T) {
	up := echoUpstream(t)
	p := startProxy(t, up.URL, "-http-max-header-bytes", "8KiB")
	req, _ := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 16<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("16 KiB header: %s, want 431", resp.Status)
	}
	req.Header.Set("X-Big", strings.Repeat("a", 4<<10))
	if resp, err = http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("4 KiB header: %v, %v", resp, err)
	}
}

func TestHTTPProxyTLS(t *testing.T) {
	pki := newTestPKI(t)
	up := echoUpstream(t)
	p := startProxy(t, up.URL, "-http-tls-cert", pki.serverCert, "-http-tls-key", pki.serverKey)
	serial := func(t *testing.T, h2 bool) (*http.Response, string) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: pki.clientConfig(false), ForceAttemptHTTP2: h2, DisableKeepAlives: true}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		b := newCookieBrowser(&http.Client{Transport: tr})
		resp, _ := b.get(t, "https://"+p.httpAddr+"/login")
		if resp.StatusCode != http.StatusOK || b.cookies["__Host-proxysession"] == "" {
			t.Fatalf("login over TLS: %s %q", resp.Status, b.setCookies)
		}
		_, body := b.get(t, "https://"+p.httpAddr+"/page")
		if body != "sid=42" {
			t.Errorf("upstream saw %q", body)
		}
		b.checkOnlySessionCookie(t)
		return resp, resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	resp, first := serial(t, true)
	if resp.ProtoMajor != 2 {
		t.Errorf("HTTP/2 client got %s", resp.Proto)
	}
	if resp, _ := serial(t, false); resp.ProtoMajor != 1 {
		t.Errorf("HTTP/1.1 client got %s", resp.Proto)
	}
	if code, _ := httpGet(t, "http://"+p.httpAddr+"/"); code != http.StatusBadRequest {
		t.Errorf("plain http on the TLS port: %d, want 400", code)
	}
	// The files are reloaded when they change (looked at once a second).
	pki.issueServer(t)
	time.Sleep(1100 * time.Millisecond)
	if _, second := serial(t, true); second == first {
		t.Error("the new certificate was not served")
	}
}

// TestHTTPProxyGracefulShutdown: a request in flight when the process is
// told to stop is answered; then run returns.
func TestHTTPProxyGracefulShutdown(t *testing.T) {
	entered := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "done")
	}))
	defer up.Close()
	p := startProxy(t, up.URL, "-shutdown-grace", "10s")
	result := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + p.httpAddr + "/slow")
		if err != nil {
			result <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		result <- string(b)
	}()
	<-entered
	if err := p.stop(); err != nil {
		t.Errorf("run = %v", err)
	}
	if got := <-result; got != "done" {
		t.Errorf("request in flight got %q", got)
	}
}

func TestHTTPProxyConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-grpc-addr", "off"}, "off needs -http-addr"},
		{[]string{"-http-addr", ":0"}, "-upstream: -http-addr needs an upstream URL"},
		{[]string{"-upstream", "http://x"}, "-upstream: needs -http-addr"},
		{[]string{"-http-addr", ":0", "-upstream", "ftp://x"}, "give an http:// or https:// URL"},
		{[]string{"-http-addr", ":0", "-upstream", "http://u:p@x/"}, "no user information"},
		{[]string{"-http-addr", ":0", "-upstream", "http://x", "-grpc-addr", "off", "-tls-cert", "c", "-tls-key", "k"}, "-grpc-addr off turns off"},
		{[]string{"-http-addr", ":0", "-upstream", "http://x", "-http-tls-cert", "c"}, "give both or neither"},
		{[]string{"-http-addr", ":0", "-upstream", "http://x", "-upstream-timeout", "0s"}, "must be positive"},
	} {
		err := run(context.Background(), tt.args, io.Discard, io.Discard, hooks{})
		if _, ok := errors.AsType[*usageError](err); !ok || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want a usage error with %q", tt.args, err, tt.want)
		}
	}
}
