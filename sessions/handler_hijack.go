package sessions

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// This file is SessionHandler on a hijacked connection: the handler
// writes its response head itself, and the connection's filter captures
// its cookies as WriteHeader does for the header map.

// errHijackAfterHeader refuses to hand over a connection on which an
// HTTP response is under way: the handler could go on to write raw
// HTTP (a chunked trailer, a second response) past the session layer.
var errHijackAfterHeader = errors.New("sessions: hijack after an HTTP response header was written")

// Hijack implements http.Hijacker. The handler writes the response head
// itself on a hijacked connection (httputil.ReverseProxy does for a 101
// Switching Protocols), so the returned connection parses it and edits
// it as WriteHeader would edit the header map; see hijackedConn. Once the
// head is out, the connection's bytes are the handler's own business.
//
// A connection on which a final response header went out through
// WriteHeader is handed over as it is if the protocol was switched (101,
// or a tunnel for CONNECT), and refused otherwise.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.failed {
		return nil, nil, errStoreFailed
	}
	switched := w.wroteHeader &&
		(w.status == http.StatusSwitchingProtocols || w.r.Method == http.MethodConnect && w.status/100 == 2)
	if w.wroteHeader && !switched {
		return nil, nil, errHijackAfterHeader
	}
	conn, rw, err := http.NewResponseController(w.w).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("sessions: hijack: %w", err)
	}
	w.hijacked = true
	if switched {
		return conn, rw, nil
	}
	hc := &hijackedConn{Conn: conn, w: w}
	// The handler's buffered writes must go through hc too: a new
	// bufio.Writer over it, the client's unread bytes kept.
	return hc, bufio.NewReadWriter(rw.Reader, bufio.NewWriter(hc)), nil
}

// maxHijackedHead bounds the response head buffered on a hijacked
// connection, as net/http bounds a request's (http.DefaultMaxHeaderBytes
// is 1 MiB; response heads are far smaller).
const maxHijackedHead = 64 << 10

var errHijackedHead = errors.New("sessions: hijacked connection closed: the response head was refused")

// hijackedConn is a hijacked connection whose writes pass through a
// response-head filter until the protocol is switched. Each HTTP/1.x
// response head the handler writes is buffered whole, parsed strictly and
// rewritten: Set-Cookie lines are captured into the session (for a 101 or
// a final response) or dropped (for other 1xx), and the session cookie
// and Cache-Control edit added. A head that is malformed, too large, or
// would leave HTTP framing the filter cannot follow (chunked encoding, an
// upgrade to HTTP/2) closes the connection instead: fail closed. After a
// 101, a CONNECT tunnel's 2xx, or a final response (sent with Connection:
// close), bytes pass through untouched.
type hijackedConn struct {
	net.Conn
	w *sessionWriter

	// raw is set, after the last head is written, once bytes pass
	// through; it spares them the lock.
	raw    atomic.Bool
	mu     sync.Mutex // serialises the filter, and Capture on w.x
	head   []byte     // an incomplete head
	scan   int        // where the next unread line of head starts
	broken bool
}

func (c *hijackedConn) Write(p []byte) (int, error) {
	if c.raw.Load() {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw.Load() {
		return c.Conn.Write(p)
	}
	if c.broken {
		return 0, errHijackedHead
	}
	c.head = append(c.head, p...)
	for {
		end := c.headLength()
		if end < 0 {
			if len(c.head) > maxHijackedHead {
				return 0, c.refuse("response head too large")
			}
			return len(p), nil
		}
		if end > maxHijackedHead {
			return 0, c.refuse("response head too large")
		}
		out, last, reason := c.editHead(c.head[:end])
		if reason != "" {
			return 0, c.refuse(reason)
		}
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		n := copy(c.head, c.head[end:])
		c.head, c.scan = c.head[:n], 0
		if last {
			if n > 0 {
				if _, err := c.Conn.Write(c.head); err != nil {
					return 0, err
				}
			}
			c.head = nil
			c.raw.Store(true)
			return len(p), nil
		}
	}
}

// refuse closes the connection: a head it cannot vouch for is not sent.
func (c *hijackedConn) refuse(reason string) error {
	c.broken, c.head = true, nil
	c.w.h.c.log.LogAttrs(c.w.r.Context(), slog.LevelWarn, "closed a hijacked connection instead of sending its response head",
		slog.String("reason", reason))
	c.Conn.Close()
	return errHijackedHead
}

// headLength returns the length of the response head at the start of
// c.head, up to and including the empty line that ends it, or -1 if there
// is no complete head yet. Lines end in LF, with or without CR, as
// clients accept. Lines already scanned are not scanned again.
func (c *hijackedConn) headLength() int {
	for {
		j := bytes.IndexByte(c.head[c.scan:], '\n')
		if j < 0 {
			return -1
		}
		line := c.head[c.scan : c.scan+j]
		c.scan += j + 1
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return c.scan
		}
	}
}

// responseHead is a response head parsed on a hijacked connection.
type responseHead struct {
	c      *Cache   // whose binding headers are taken out
	status []byte   // the status line
	code   int      // its status code
	fields Response // the fields Capture reads
	kept   [][]byte // the header lines to send on: all but Set-Cookie
	// upgrade and transferEncoding say whether the head has the field.
	upgrade, transferEncoding bool
}

// editHead parses and rewrites one response head (see hijackedConn). It
// returns the head to send and whether the bytes after it pass through,
// or the reason to refuse it. Reasons name no header values.
func (c *hijackedConn) editHead(head []byte) (out []byte, last bool, reason string) {
	h, reason := parseHead(c.w.h.c, head)
	if reason != "" {
		return nil, false, reason
	}
	informational := h.code < 200 && h.code != http.StatusSwitchingProtocols
	edit, closeConn, reason := c.captureHead(&h, informational)
	if reason != "" {
		return nil, false, reason
	}
	out = make([]byte, 0, len(head)+128)
	return h.appendEdited(out, &edit, closeConn), !informational, ""
}

// parseHead parses a response head strictly: its lines, less the empty
// line that ends it, are a status line and header lines.
func parseHead(c *Cache, head []byte) (h responseHead, reason string) {
	h.c = c
	lines, reason := headLines(head)
	if reason != "" {
		return h, reason
	}
	code, ok := parseStatusLine(lines[0])
	if !ok {
		return h, "malformed status line"
	}
	h.status, h.code = lines[0], code
	for _, line := range lines[1:] {
		if reason := h.addField(line); reason != "" {
			return h, reason
		}
	}
	return h, ""
}

// headLines splits a head into its lines, without their CR LF or LF and
// without the empty line that ends the head. No line may hold a control
// character.
func headLines(head []byte) ([][]byte, string) {
	lines := bytes.Split(head, []byte("\n"))
	lines = lines[:len(lines)-2] // the empty line and what follows its LF
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\r"))
		for _, b := range line {
			// A bare CR ends a line for some clients: a field hidden
			// behind one would escape the filter.
			if b < 0x20 && b != '\t' || b == 0x7f {
				return nil, "control character in response head"
			}
		}
		lines[i] = line
	}
	if len(lines) == 0 {
		return nil, "empty response head"
	}
	return lines, ""
}

// addField parses one header line into h. Set-Cookie lines are taken
// out; the others are kept to be sent.
func (h *responseHead) addField(line []byte) (reason string) {
	if line[0] == ' ' || line[0] == '\t' {
		return "obsolete line folding in response head"
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(string(line[:colon])) {
		return "malformed header line"
	}
	name := string(line[:colon])
	value := trimWSP(string(line[colon+1:]))
	switch {
	case strings.EqualFold(name, "Set-Cookie"):
		h.fields.SetCookie = append(h.fields.SetCookie, value)
		return ""
	case h.c.bindingField(name) >= 0:
		// Read, and never sent on.
		bind := [...]*string{&h.fields.User, &h.fields.Sid, &h.fields.Logout, &h.fields.Rotate}
		if f := bind[h.c.bindingField(name)]; *f == "" {
			*f = value
		}
		return ""
	case strings.EqualFold(name, "Clear-Site-Data"):
		h.fields.ClearSiteData = append(h.fields.ClearSiteData, value)
	case strings.EqualFold(name, "Cache-Control"):
		h.fields.CacheControl = append(h.fields.CacheControl, value)
	case strings.EqualFold(name, "Transfer-Encoding"):
		h.transferEncoding = true
	case strings.EqualFold(name, "Upgrade"):
		h.upgrade = true
		for proto := range trailerNames(value) {
			name, _, _ := strings.Cut(proto, "/")
			if name = strings.TrimSpace(name); strings.EqualFold(name, "h2c") || hasPrefixFold(name, "HTTP") {
				// HTTP/2 would carry Set-Cookie in frames the
				// filter cannot read.
				return "upgrade to HTTP"
			}
		}
	}
	h.kept = append(h.kept, line)
	return ""
}

// captureHead captures the cookies of a 101, a CONNECT tunnel's 2xx or a
// final response head into the session, and returns the edit and whether
// the connection must close after the head. An informational head's
// cookies are withheld; a head whose framing the filter could not follow
// is refused.
func (c *hijackedConn) captureHead(h *responseHead, informational bool) (edit ResponseEdit, closeConn bool, reason string) {
	tunnel := h.code/100 == 2 && c.w.r.Method == http.MethodConnect
	switch {
	case informational:
		if len(h.fields.SetCookie) > 0 {
			c.w.h.c.log.LogAttrs(c.w.r.Context(), slog.LevelInfo, "withheld backend Set-Cookie from an informational response",
				slog.Int("status", h.code), slog.Int("count", len(h.fields.SetCookie)))
		}
		return edit, false, ""
	case h.code == http.StatusSwitchingProtocols && !h.upgrade:
		return edit, false, "101 without Upgrade"
	case h.code != http.StatusSwitchingProtocols && !tunnel && h.transferEncoding:
		// The body's chunked framing could end in trailers.
		return edit, false, "Transfer-Encoding on a hijacked connection"
	}
	// What follows a final response is not parsed: the client must not
	// read a second response from the connection.
	closeConn = h.code != http.StatusSwitchingProtocols && !tunnel
	ctx, span := c.w.h.c.tracer.Start(c.w.r.Context(), PhaseResponse, &c.w.x)
	edit, err := c.w.h.c.Capture(ctx, &c.w.x, &h.fields)
	span.End(&c.w.x, edit.modifies(), err)
	if err != nil {
		c.w.h.c.log.LogAttrs(c.w.r.Context(), slog.LevelError, "session store failed on a hijacked connection",
			slog.String("error", err.Error()))
		return ResponseEdit{}, false, "session store failed"
	}
	return edit, closeConn, ""
}

// appendEdited appends the head, edited, to out: the status line, the
// kept header lines less those edit or closeConn replace, the session's
// Set-Cookie and Cache-Control fields, and Connection: close.
func (h *responseHead) appendEdited(out []byte, edit *ResponseEdit, closeConn bool) []byte {
	out = append(append(out, h.status...), "\r\n"...)
	for _, line := range h.kept {
		name, _, _ := bytes.Cut(line, []byte(":"))
		if edit.CacheControl != "" && bytes.EqualFold(name, []byte("Cache-Control")) ||
			closeConn && bytes.EqualFold(name, []byte("Connection")) {
			continue
		}
		out = append(append(out, line...), "\r\n"...)
	}
	for _, v := range edit.SetCookie {
		out = append(append(append(out, "Set-Cookie: "...), v...), "\r\n"...)
	}
	if edit.CacheControl != "" {
		out = append(append(append(out, "Cache-Control: "...), edit.CacheControl...), "\r\n"...)
	}
	if closeConn {
		out = append(out, "Connection: close\r\n"...)
	}
	return append(out, "\r\n"...)
}

// parseStatusLine parses "HTTP/1.x NNN[ reason]" strictly.
func parseStatusLine(line []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(line, []byte("HTTP/1."))
	if !ok || len(rest) < 5 || rest[0] != '0' && rest[0] != '1' || rest[1] != ' ' {
		return 0, false
	}
	digits := rest[2:5]
	if len(rest) > 5 && rest[5] != ' ' {
		return 0, false
	}
	for _, d := range digits {
		if !isDigit(d) {
			return 0, false
		}
	}
	code, _ := strconv.Atoi(string(digits))
	return code, code >= 100
}
