// Package envoytest is an in-process stand-in for Envoy's ext_proc HTTP
// filter, for tests and benchmarks that cannot run Envoy.
//
// A Filter is an http.RoundTripper: put it in an http.Client with a cookie
// jar and the client is a browser talking to Envoy. For each request the
// Filter opens one ext_proc stream, sends the request headers as Envoy
// does (pseudo-headers first, values in raw_value only, then the client's
// headers, then x-forwarded-proto and x-request-id), applies the reply the
// way Envoy's mutation code does, calls the backend handler, sends the
// response headers on the same stream, applies that reply, and closes the
// stream (half-close, then reset).
//
// It fails the way Envoy fails: a reply of the wrong type, an invalid
// mutation, or a gRPC error becomes a local reply 500 (failure_mode_allow
// false), no reply within MessageTimeout becomes a 504, and a stream the
// server closes early means "continue without processing". Every reply is
// also checked with its generated ValidateAll, which Envoy does not do:
// a reply Envoy might accept by luck is still a bug here.
package envoytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/publicsuffix"
)

// Filter is the ext_proc filter. Set Client and Backend; the zero value of
// the other fields is Envoy's default.
type Filter struct {
	// Client talks to the ext_proc server.
	Client extprocv3.ExternalProcessorClient
	// Backend answers the requests Envoy forwards.
	Backend http.Handler
	// MessageTimeout is Envoy's per-message timeout; default 200ms.
	MessageTimeout time.Duration
	// FailureModeAllow lets requests continue unprocessed when the
	// server fails, as Envoy's failure_mode_allow does.
	FailureModeAllow bool
	// LegacyValue sends header values in value instead of raw_value, as
	// Envoy 1.31 and older could.
	LegacyValue bool
	// ObservabilityMode sends messages as observability_mode does and
	// ignores replies.
	ObservabilityMode bool
	// Trace, when set, receives every message sent and received.
	Trace func(sent bool, msg any)
	// DownstreamScheme, when set, is the scheme of Envoy's own
	// downstream connection, which Envoy reports in :scheme and (with
	// use_remote_address) x-forwarded-proto whatever the browser used:
	// "http" when TLS ends at a load balancer in front of Envoy.
	DownstreamScheme string
	// AllowedHeaders and DisallowedHeaders are the filter's forward_rules
	// as exact lower-case names: when AllowedHeaders is not empty, only
	// those headers go to the processor; DisallowedHeaders never do.
	// Pseudo-headers are matched too, as in Envoy. Mutations still apply
	// to every header, seen or not.
	AllowedHeaders, DisallowedHeaders []string

	mu    sync.Mutex
	stats Stats
}

// Stats counts what the Filter saw.
type Stats struct {
	Streams, Spurious, RejectedMutations, LocalReplies, InvalidReplies int
}

// Stats returns the counters so far.
func (f *Filter) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *Filter) count(fn func(*Stats)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.stats)
}

// NewBrowser returns a client that uses f as its transport and keeps
// cookies like a browser. Redirects are followed.
func NewBrowser(f *Filter) *http.Client {
	jar, err := cookiejar.New(&cookiejar.Options{PublicSuffixList: publicsuffix.List})
	if err != nil {
		panic(err) // cookiejar.New never fails
	}
	return &http.Client{Transport: f, Jar: jar}
}

// localReply is a response Envoy generates itself.
type localReply struct {
	status  int
	details string
	headers []Header
	body    []byte
}

func (l *localReply) Error() string { return fmt.Sprintf("local reply %d: %s", l.status, l.details) }

// RoundTrip sends req through the filter to the backend.
func (f *Filter) RoundTrip(req *http.Request) (*http.Response, error) {
	timeout := f.MessageTimeout
	if timeout == 0 {
		timeout = 200 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel() // the reset that follows Envoy's half-close
	f.count(func(s *Stats) { s.Streams++ })
	stream, err := f.Client.Process(ctx)
	if err != nil {
		return f.failed(req, &localReply{status: 500, details: "ext_proc_error_gRPC_error_open"}, err)
	}
	x := &exchange{f: f, stream: stream, timeout: timeout, active: true}
	defer x.close()

	headers := f.requestHeaderMap(req)
	if err := x.process(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     f.headerMap(headers),
			EndOfStream: req.Body == nil || req.Body == http.NoBody,
		}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{},
	}, phaseRequest, &headers); err != nil {
		return f.failed(req, x.reply(err), err)
	}

	backendReq, err := backendRequest(req, headers)
	if err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	f.Backend.ServeHTTP(rec, backendReq)
	result := rec.Result()
	respHeaders := responseHeaderMap(result)
	body, _ := io.ReadAll(result.Body)

	if err := x.process(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers:     f.headerMap(respHeaders),
			EndOfStream: len(body) == 0,
		}},
	}, phaseResponse, &respHeaders); err != nil {
		return f.failed(req, x.reply(err), err)
	}
	return clientResponse(req, respHeaders, body), nil
}

// failed turns a local reply into the client's response. Errors that are
// bugs of the server under test (invalid replies) are returned as errors.
func (f *Filter) failed(req *http.Request, l *localReply, err error) (*http.Response, error) {
	var invalid *invalidReplyError
	if errors.As(err, &invalid) {
		return nil, err
	}
	f.count(func(s *Stats) { s.LocalReplies++ })
	h := append([]Header{{":status", []byte(strconv.Itoa(l.status))}}, l.headers...)
	if len(l.body) > 0 && !hasHeader(h, "content-type") {
		h = append(h, Header{"content-type", []byte("text/plain")})
	}
	h = append(h, Header{"x-envoy-response-code-details", []byte(l.details)})
	return clientResponse(req, h, l.body), nil
}

type phase int

const (
	phaseRequest phase = iota
	phaseResponse
)

// exchange is one ext_proc stream.
type exchange struct {
	f       *Filter
	stream  extprocv3.ExternalProcessor_ProcessClient
	timeout time.Duration
	active  bool // false once processing is complete for this stream
	closed  bool
}

type invalidReplyError struct{ err error }

func (e *invalidReplyError) Error() string {
	return "ext_proc server sent an invalid reply: " + e.err.Error()
}

func (e *invalidReplyError) Unwrap() error { return e.err }

// reply maps a processing error to Envoy's local reply.
func (x *exchange) reply(err error) *localReply {
	var l *localReply
	if errors.As(err, &l) {
		return l
	}
	return &localReply{status: 500, details: "ext_proc_error"}
}

// process sends one message and applies its reply to headers.
func (x *exchange) process(msg *extprocv3.ProcessingRequest, p phase, headers *[]Header) error {
	if !x.active {
		return nil
	}
	f := x.f
	msg.ObservabilityMode = f.ObservabilityMode
	if msg.MetadataContext == nil {
		msg.MetadataContext = &corev3.Metadata{}
	}
	if f.Trace != nil {
		f.Trace(true, msg)
	}
	if err := x.stream.Send(msg); err != nil {
		return x.streamFailed(err)
	}
	if f.ObservabilityMode {
		return nil // Envoy neither waits nor applies anything
	}
	resp, err := x.receive()
	if resp == nil {
		return err
	}
	return x.apply(resp, p, headers)
}

// receive waits MessageTimeout at most for the reply. Without one it
// returns what Envoy does instead: nil (continue unprocessed) or an error.
func (x *exchange) receive() (*extprocv3.ProcessingResponse, error) {
	type received struct {
		resp *extprocv3.ProcessingResponse
		err  error
	}
	ch := make(chan received, 1)
	go func() {
		resp, err := x.stream.Recv()
		ch <- received{resp, err}
	}()
	var r received
	select {
	case r = <-ch:
	case <-time.After(x.timeout):
		x.active = false
		if x.f.FailureModeAllow {
			return nil, nil
		}
		return nil, &localReply{status: 504, details: "ext_proc_error_per-message_timeout_exceeded"}
	}
	if r.err == io.EOF {
		// The server closed the stream with OK: processing is complete.
		x.active = false
		return nil, nil
	}
	if r.err != nil {
		return nil, x.streamFailed(r.err)
	}
	return r.resp, nil
}

// apply checks a reply to a message of phase p and applies its mutation
// to headers.
func (x *exchange) apply(resp *extprocv3.ProcessingResponse, p phase, headers *[]Header) error {
	f := x.f
	if f.Trace != nil {
		f.Trace(false, resp)
	}
	if err := resp.ValidateAll(); err != nil {
		f.count(func(s *Stats) { s.InvalidReplies++ })
		return &invalidReplyError{err}
	}
	var common *extprocv3.CommonResponse
	switch r := resp.Response.(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if p != phaseRequest {
			return x.spurious()
		}
		common = r.RequestHeaders.GetResponse()
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		if p != phaseResponse {
			return x.spurious()
		}
		common = r.ResponseHeaders.GetResponse()
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		x.active = false
		return immediate(r.ImmediateResponse, f)
	default:
		return x.spurious()
	}
	if common.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE {
		return x.spurious() // not valid for headers without a body in this mode
	}
	if m := common.GetHeaderMutation(); m != nil {
		rejected, err := ApplyMutation(headers, m)
		f.count(func(s *Stats) { s.RejectedMutations += rejected })
		if err != nil {
			x.active = false
			return &localReply{status: 500, details: "ext_proc_error_" + strings.ReplaceAll(err.Error(), " ", "_")}
		}
	}
	return nil
}

func (x *exchange) spurious() error {
	x.active = false
	x.f.count(func(s *Stats) { s.Spurious++ })
	if x.f.FailureModeAllow {
		return nil
	}
	return &localReply{status: 500, details: "ext_proc_error_spurious_message"}
}

func (x *exchange) streamFailed(err error) error {
	x.active = false
	if x.f.FailureModeAllow {
		return nil
	}
	return &localReply{status: 500, details: "ext_proc_error_gRPC_error{" + err.Error() + "}"}
}

func (x *exchange) close() {
	if !x.closed {
		x.closed = true
		x.stream.CloseSend()
	}
}

// immediate turns an ImmediateResponse into a local reply, as Envoy does.
func immediate(ir *extprocv3.ImmediateResponse, f *Filter) error {
	status := int(ir.GetStatus().GetCode())
	if status < 200 {
		status = 200
	}
	var headers []Header
	if m := ir.GetHeaders(); m != nil {
		// A failing mutation of a local reply is only logged by Envoy.
		rejected, _ := ApplyMutation(&headers, m)
		f.count(func(s *Stats) { s.RejectedMutations += rejected })
	}
	return &localReply{status: status, details: ir.GetDetails(), headers: headers, body: ir.GetBody()}
}

// headerMap encodes headers as Envoy sends them, less those the
// forward rules hide.
func (f *Filter) headerMap(headers []Header) *corev3.HeaderMap {
	m := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(headers))}
	for _, h := range headers {
		if !f.forwarded(h.Key) {
			continue
		}
		if f.LegacyValue {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: h.Key, Value: string(h.Value)})
		} else {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: h.Key, RawValue: bytes.Clone(h.Value)})
		}
	}
	return m
}

// forwarded applies the forward rules to a header name.
func (f *Filter) forwarded(key string) bool {
	if len(f.AllowedHeaders) > 0 && !slices.Contains(f.AllowedHeaders, key) {
		return false
	}
	return !slices.Contains(f.DisallowedHeaders, key)
}

// requestHeaderMap builds the header map Envoy's HCM hands to the filter:
// pseudo-headers, the client's headers (sorted, as a Go client's map has
// no order), then x-forwarded-proto and x-request-id.
func (f *Filter) requestHeaderMap(req *http.Request) []Header {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	scheme := req.URL.Scheme
	if f.DownstreamScheme != "" {
		scheme = f.DownstreamScheme
	}
	h := []Header{
		{":authority", []byte(host)},
		{":path", []byte(req.URL.RequestURI())},
		{":method", []byte(req.Method)},
		{":scheme", []byte(scheme)},
	}
	for _, k := range slices.Sorted(maps.Keys(req.Header)) {
		lk := strings.ToLower(k)
		if lk == "host" || lk == "x-forwarded-proto" || lk == "x-request-id" {
			continue
		}
		for _, v := range req.Header[k] {
			h = append(h, Header{lk, []byte(v)})
		}
	}
	return append(h,
		Header{"x-forwarded-proto", []byte(scheme)},
		Header{"x-request-id", []byte(rand.Text())},
	)
}

// backendRequest builds the request the router forwards upstream.
func backendRequest(orig *http.Request, headers []Header) (*http.Request, error) {
	var authority, path, method, scheme string
	h := http.Header{}
	for _, e := range headers {
		switch e.Key {
		case ":authority":
			authority = string(e.Value)
		case ":path":
			path = string(e.Value)
		case ":method":
			method = string(e.Value)
		case ":scheme":
			scheme = string(e.Value)
		default:
			h.Add(e.Key, string(e.Value))
		}
	}
	r, err := http.NewRequestWithContext(orig.Context(), method, scheme+"://"+authority+path, orig.Body)
	if err != nil {
		return nil, fmt.Errorf("envoytest: building the upstream request: %w", err)
	}
	r.Header = h
	r.Host = authority
	r.RequestURI = path
	return r, nil
}

// responseHeaderMap builds the response header map: :status, the
// backend's headers (Set-Cookie lines in order), and the router's
// x-envoy-upstream-service-time.
func responseHeaderMap(resp *http.Response) []Header {
	h := []Header{{":status", []byte(strconv.Itoa(resp.StatusCode))}}
	for _, k := range slices.Sorted(maps.Keys(resp.Header)) {
		for _, v := range resp.Header[k] {
			h = append(h, Header{strings.ToLower(k), []byte(v)})
		}
	}
	return append(h, Header{"x-envoy-upstream-service-time", []byte("1")})
}

// clientResponse builds what the browser receives.
func clientResponse(req *http.Request, headers []Header, body []byte) *http.Response {
	resp := &http.Response{
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
	for _, h := range headers {
		if h.Key == ":status" {
			resp.StatusCode, _ = strconv.Atoi(string(h.Value))
			continue
		}
		resp.Header.Add(h.Key, string(h.Value))
	}
	resp.Status = strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
	return resp
}
