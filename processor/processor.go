// Package processor is proxysession's Envoy external processing (ext_proc)
// gRPC server. It translates the ext_proc protocol into calls on the
// session engine and back: request headers go through sessions.Cache.Expand,
// response headers through sessions.Cache.Capture. It knows nothing about
// cookie rules; the engine knows nothing about gRPC.
//
// The server expects Envoy's ext_proc filter in the processing mode
// request_header_mode SEND, response_header_mode SEND, bodies NONE,
// trailers SKIP. It follows what current Envoy does (see the README):
// header values arrive in raw_value, mutations are written in raw_value
// only, every message gets exactly one reply of the matching type, and a
// failing session store fails closed with an ImmediateResponse 503.
package processor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/proxysession/proxysession/sessions"
)

// ServiceName is the gRPC service this package implements.
const ServiceName = "envoy.service.ext_proc.v3.ExternalProcessor"

// Engine is the part of the session engine the processor uses;
// *sessions.Cache implements it.
type Engine interface {
	Expand(ctx context.Context, r *sessions.Request, x *sessions.Exchange) error
	Capture(ctx context.Context, x *sessions.Exchange, resp *sessions.Response) (sessions.ResponseEdit, error)
}

// Options configure a Server.
type Options struct {
	// Logger receives stream and protocol problems; never cookie values
	// or session ids. Default slog.Default().
	Logger *slog.Logger
	// Metrics records message counts and latencies. Default: metrics
	// that are not registered anywhere.
	Metrics *Metrics
	// TracerProvider, when not nil, gives each headers message a span
	// (request_headers, response_headers), a child of the stream's span
	// in the stream's context (see StatsHandler). Default: no spans.
	TracerProvider trace.TracerProvider
	// ClearRouteCache asks Envoy to choose the route again when a reply
	// rewrites the Cookie header. Envoy picks the route before ext_proc
	// runs, so routes that match on cookies otherwise see the browser's
	// session cookie, not the backend cookies proxysession puts in. It
	// costs Envoy a second route lookup for each such request.
	ClearRouteCache bool
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	engine  Engine
	log     *slog.Logger
	metrics *Metrics
	tracer  *sessions.Tracer // nil: no spans

	clearRouteCache bool

	// bindingNames are the lower-case names of the engine's binding
	// headers (user, sid, logout, rotate), when they are not the
	// defaults that exactField knows; removeResponse is what every
	// response reply removes: set-cookie and the binding headers.
	bindingNames   []string
	removeResponse []string
	// handleHeader is the lower-case request header for the session's
	// handle, or ""; removeRequest* are the request removals with it.
	handleHeader                     string
	removeHandle, removeCookieHandle []string

	warnedObservability atomic.Bool
	warnedNoRequest     atomic.Bool
}

// New returns a Server that runs every exchange through engine.
func New(engine Engine, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	s := &Server{engine: engine, log: opts.Logger, metrics: opts.Metrics, tracer: sessions.NewTracer(opts.TracerProvider),
		clearRouteCache: opts.ClearRouteCache}
	names := defaultBindingNames[:]
	if b, ok := engine.(interface{ BindingHeaders() []string }); ok && len(b.BindingHeaders()) == len(defaultBindingNames) {
		names = b.BindingHeaders()
		if !slices.Equal(names, defaultBindingNames[:]) {
			s.bindingNames = names
		}
	}
	s.removeResponse = append([]string{"set-cookie"}, names...)
	if h, ok := engine.(interface{ SessionHandleHeader() string }); ok && h.SessionHandleHeader() != "" {
		s.handleHeader = strings.ToLower(h.SessionHandleHeader())
		s.removeHandle = []string{s.handleHeader}
		s.removeCookieHandle = []string{"cookie", s.handleHeader}
	}
	return s
}

// defaultBindingNames are sessions' default binding headers, in the
// order of sessions.Cache.BindingHeaders.
var defaultBindingNames = [...]string{"proxysession-user", "proxysession-sid", "proxysession-logout", "proxysession-rotate"}

// responseField classifies a response header key, the engine's binding
// header names included.
func (s *Server) responseField(key string) field {
	f := fieldOf(key)
	if s.bindingNames == nil || f != fieldOther && f < fieldUser {
		return f
	}
	if f >= fieldUser {
		// A default name that this engine does not use.
		f = fieldOther
	}
	for i, name := range s.bindingNames {
		if len(key) == len(name) && strings.EqualFold(key, name) {
			return fieldUser + field(i)
		}
	}
	return f
}

// Process serves one ext_proc stream: one HTTP request and its response.
// Envoy opens a new stream per request, so the Exchange of the request
// phase, kept here, is what the response phase needs.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	s.metrics.streamsActive.Inc()
	defer s.metrics.streamsActive.Dec()
	st := streamState{}
	for {
		req, err := stream.Recv()
		if err != nil {
			if isStreamEnd(err) {
				return nil
			}
			s.metrics.streamErrors.WithLabelValues("recv").Inc()
			s.log.LogAttrs(ctx, slog.LevelWarn, "ext_proc stream receive failed", slog.String("error", err.Error()))
			return err
		}
		resp := s.handle(ctx, &st, req)
		if resp == nil {
			continue
		}
		if err := stream.Send(resp); err != nil {
			if isStreamEnd(err) {
				return nil
			}
			s.metrics.streamErrors.WithLabelValues("send").Inc()
			s.log.LogAttrs(ctx, slog.LevelWarn, "ext_proc stream send failed", slog.String("error", err.Error()))
			return err
		}
	}
}

// isStreamEnd reports whether err is how a stream normally ends: Envoy
// half-closes (EOF) and resets (Canceled) right after its last message.
func isStreamEnd(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return true
	}
	return status.Code(err) == codes.Canceled
}

// streamState is what one stream remembers between its messages.
type streamState struct {
	x          sessions.Exchange
	sawRequest bool
}

// handle answers one message. It returns nil for messages that take no
// answer: those of observability mode and those without a known request.
func (s *Server) handle(ctx context.Context, st *streamState, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if req.GetObservabilityMode() {
		s.metrics.message(phaseOf(req), outcomeIgnored).Inc()
		if s.warnedObservability.CompareAndSwap(false, true) {
			s.log.Error("Envoy's ext_proc filter runs in observability_mode: it ignores every reply, so proxysession cannot swap cookies and backend cookies reach browsers; turn observability_mode off")
		}
		return nil
	}
	switch r := req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return s.requestHeaders(ctx, st, r.RequestHeaders)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return s.responseHeaders(ctx, st, r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_RequestBody:
		s.metrics.message(phaseRequestBody, outcomeUnchanged).Inc()
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		s.metrics.message(phaseResponseBody, outcomeUnchanged).Inc()
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		s.metrics.message(phaseRequestTrailers, outcomeUnchanged).Inc()
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		s.metrics.message(phaseResponseTrailers, outcomeUnchanged).Inc()
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	default:
		// No request we know: a flow-control-only message, or a type
		// newer than this server. Envoy expects no reply to the former,
		// and a reply of a type we cannot name would be spurious.
		s.metrics.message(phaseUnknown, outcomeIgnored).Inc()
		s.metrics.badInput.WithLabelValues("unknown_message").Inc()
		s.log.LogAttrs(ctx, slog.LevelWarn, "ignored an ext_proc message without a known request type")
		return nil
	}
}

// requestHeaders swaps the session cookie for the jar's cookies.
func (s *Server) requestHeaders(ctx context.Context, st *streamState, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	start := time.Now()
	ctx, span := s.tracer.Start(ctx, sessions.PhaseRequest, &st.x)
	st.sawRequest = true
	req := s.sessionRequest(ctx, h.GetHeaders())
	if err := s.engine.Expand(ctx, &req, &st.x); err != nil {
		span.End(&st.x, false, err)
		return s.unavailable(ctx, phaseRequestHeaders, start, err)
	}
	// A request that shows no Cookie header gets one removed all the same:
	// when Envoy's forward_rules hide it, the session cookie must not
	// reach the backend unseen. Removing a missing header does nothing.
	noCookies := len(req.Cookies) == 0
	reply := newHeadersReply(phaseRequestHeaders, st.x.RewriteCookie || noCookies || s.handleHeader != "")
	switch {
	case !st.x.RewriteCookie:
		if noCookies {
			reply.mutation.RemoveHeaders = removeCookie
		}
	case st.x.Cookie == "":
		reply.mutation.RemoveHeaders = removeCookie
	case len(st.x.Cookie) <= maxHeaderValueBytes:
		reply.mutation.SetHeaders = reply.setCookieHeader(st.x.Cookie)
	default:
		reply.mutation.SetHeaders = s.cookieHeaders(ctx, st.x.Cookie)
	}
	if s.handleHeader != "" {
		// The browser must not name a handle for the backend: the
		// header is removed, or set to the session's own.
		if st.x.Handle != "" {
			reply.mutation.SetHeaders = append(reply.mutation.SetHeaders, header(s.handleHeader, st.x.Handle, false))
		} else if len(reply.mutation.RemoveHeaders) > 0 {
			reply.mutation.RemoveHeaders = s.removeCookieHandle
		} else {
			reply.mutation.RemoveHeaders = s.removeHandle
		}
	}
	// Envoy clears the route cache only with a header mutation, and only
	// on the request path.
	reply.common.ClearRouteCache = s.clearRouteCache && st.x.RewriteCookie
	s.metrics.observe(phaseRequestHeaders, st.x.RewriteCookie, start)
	span.End(&st.x, st.x.RewriteCookie, nil)
	return &reply.resp
}

// responseHeaders swaps the backend's Set-Cookie headers for the session
// cookie.
func (s *Server) responseHeaders(ctx context.Context, st *streamState, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	start := time.Now()
	ctx, span := s.tracer.Start(ctx, sessions.PhaseResponse, &st.x)
	if !st.sawRequest {
		// Without the request we do not know the URL the cookies belong
		// to: the engine rejects them, so they are dropped, not leaked.
		s.metrics.badInput.WithLabelValues("response_without_request").Inc()
		if s.warnedNoRequest.CompareAndSwap(false, true) {
			s.log.Error("received response headers without request headers on the stream: backend cookies cannot be stored and are dropped; set request_header_mode: SEND")
		}
	}
	var resp sessions.Response
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch s.responseField(hv.GetKey()) {
		case fieldUser:
			resp.User = headerValue(hv)
		case fieldSid:
			resp.Sid = headerValue(hv)
		case fieldLogout:
			resp.Logout = headerValue(hv)
		case fieldRotate:
			resp.Rotate = headerValue(hv)
		case fieldSetCookie:
			resp.SetCookie = append(resp.SetCookie, headerValue(hv))
		case fieldClearSiteData:
			resp.ClearSiteData = append(resp.ClearSiteData, headerValue(hv))
		case fieldCacheControl:
			resp.CacheControl = append(resp.CacheControl, headerValue(hv))
		}
	}
	edit, err := s.engine.Capture(ctx, &st.x, &resp)
	if err != nil {
		span.End(&st.x, false, err)
		return s.unavailable(ctx, phaseResponseHeaders, start, err)
	}
	modified := edit.RemoveSetCookie || len(edit.SetCookie) > 0 || edit.CacheControl != ""
	// Every reply removes Set-Cookie and the binding headers, whatever
	// the engine saw: when Envoy's forward_rules hide them from
	// proxysession, the backend's cookies and bindings are dropped
	// instead of reaching the browser. (Removal runs before set_headers,
	// so the session cookie survives.)
	reply := newHeadersReply(phaseResponseHeaders, true)
	m := &reply.mutation
	m.RemoveHeaders = s.removeResponse
	if modified {
		for _, v := range edit.SetCookie {
			if len(v) > maxHeaderValueBytes {
				// Only a pass-through line can be this long; Envoy's API
				// cannot carry it back.
				s.metrics.badInput.WithLabelValues("oversized_set_cookie").Inc()
				s.log.LogAttrs(ctx, slog.LevelWarn, "dropped a pass-through Set-Cookie longer than an ext_proc header value may be",
					slog.Int("bytes", len(v)))
				continue
			}
			// Several Set-Cookie entries need append: Envoy ignores
			// append_action and overwrites when append is unset.
			m.SetHeaders = append(m.SetHeaders, header("set-cookie", v, true))
		}
		if edit.CacheControl != "" {
			m.SetHeaders = append(m.SetHeaders, header("cache-control", edit.CacheControl, false))
		}
	}
	s.metrics.observe(phaseResponseHeaders, modified, start)
	span.End(&st.x, modified, nil)
	return &reply.resp
}

// Header names to remove, shared by all replies (marshalling only reads).
var removeCookie = []string{"cookie"}

// headersReply is a reply to a headers message, with room for the Cookie
// set_headers entry of a request reply, allocated at once: a reply is a tree of small
// messages, and one allocation instead of eight matters per request.
type headersReply struct {
	resp     extprocv3.ProcessingResponse
	req      extprocv3.ProcessingResponse_RequestHeaders
	res      extprocv3.ProcessingResponse_ResponseHeaders
	headers  extprocv3.HeadersResponse
	common   extprocv3.CommonResponse
	mutation extprocv3.HeaderMutation
	setOne   [1]*corev3.HeaderValueOption
	option   corev3.HeaderValueOption
	value    corev3.HeaderValue
}

// newHeadersReply links the reply's messages; without a mutation it says
// "continue unchanged".
func newHeadersReply(p phase, withMutation bool) *headersReply {
	r := &headersReply{}
	if p == phaseRequestHeaders {
		r.req.RequestHeaders = &r.headers
		r.resp.Response = &r.req
	} else {
		r.res.ResponseHeaders = &r.headers
		r.resp.Response = &r.res
	}
	if withMutation {
		r.headers.Response = &r.common
		r.common.HeaderMutation = &r.mutation
	}
	return r
}

// setCookieHeader fills the reply's own set_headers entry with the
// request's Cookie header (replacing every cookie entry) and returns the
// entries.
func (r *headersReply) setCookieHeader(cookie string) []*corev3.HeaderValueOption {
	r.value = corev3.HeaderValue{Key: "cookie", RawValue: readOnlyBytes(cookie)}
	r.option.Header = &r.value
	r.setOne[0] = &r.option
	return r.setOne[:]
}

// sessionRequest collects what the engine needs from the request headers.
func (s *Server) sessionRequest(ctx context.Context, m *corev3.HeaderMap) sessions.Request {
	var req sessions.Request
	var host string
	for _, hv := range m.GetHeaders() {
		switch fieldOf(hv.GetKey()) {
		case fieldAuthority:
			req.Host = headerValue(hv)
		case fieldHost:
			host = headerValue(hv)
		case fieldPath:
			req.Path = headerValue(hv)
		case fieldMethod:
			req.Method = headerValue(hv)
		case fieldScheme:
			req.Scheme = headerValue(hv)
		case fieldCookie:
			req.Cookies = append(req.Cookies, headerValue(hv))
		case fieldForwardedProto:
			// The engine decides whether to trust it.
			req.ForwardedProto = headerValue(hv)
		case fieldFetchSite:
			req.FetchSite = headerValue(hv)
		case fieldFetchMode:
			req.FetchMode = headerValue(hv)
		case fieldFetchDest:
			req.FetchDest = headerValue(hv)
		}
	}
	if req.Host == "" {
		req.Host = host
	}
	for _, missing := range [...]struct {
		value, name string
	}{{req.Host, "missing_authority"}, {req.Path, "missing_path"}, {req.Scheme, "missing_scheme"}} {
		if missing.value == "" {
			s.metrics.badInput.WithLabelValues(missing.name).Inc()
			s.log.LogAttrs(ctx, slog.LevelWarn, "request headers lack a pseudo-header; no stored cookies can match",
				slog.String("reason", missing.name))
		}
	}
	return req
}

// maxHeaderValueBytes is the most a HeaderValue's raw_value may hold
// (envoy.config.core.v3.HeaderValue validation rules).
const maxHeaderValueBytes = 16384

// cookieHeaders returns the set_headers entries for a Cookie header longer
// than one HeaderValue may carry: it is split between pairs into several
// cookie entries, as HTTP/2 does; a single pair too long to carry is
// dropped.
func (s *Server) cookieHeaders(ctx context.Context, cookie string) []*corev3.HeaderValueOption {
	var opts []*corev3.HeaderValueOption
	var chunk []byte
	for rest := cookie; rest != ""; {
		pair := rest
		if i := indexPairSep(rest); i >= 0 {
			pair, rest = rest[:i], rest[i+2:]
		} else {
			rest = ""
		}
		if len(pair) > maxHeaderValueBytes {
			s.metrics.badInput.WithLabelValues("oversized_cookie").Inc()
			s.log.LogAttrs(ctx, slog.LevelWarn, "dropped a cookie longer than an ext_proc header value may be", slog.Int("bytes", len(pair)))
			continue
		}
		if len(chunk) > 0 && len(chunk)+2+len(pair) > maxHeaderValueBytes {
			opts = append(opts, header("cookie", string(chunk), len(opts) > 0))
			chunk = chunk[:0]
		}
		if len(chunk) > 0 {
			chunk = append(chunk, "; "...)
		}
		chunk = append(chunk, pair...)
	}
	if len(chunk) > 0 {
		opts = append(opts, header("cookie", string(chunk), len(opts) > 0))
	}
	return opts
}

func indexPairSep(s string) int {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == ';' && s[i+1] == ' ' {
			return i
		}
	}
	return -1
}

// unavailable fails closed: Envoy answers 503 itself, and neither the
// request without its cookies nor the response with its cookies passes.
func (s *Server) unavailable(ctx context.Context, p phase, start time.Time, err error) *extprocv3.ProcessingResponse {
	s.log.LogAttrs(ctx, slog.LevelError, "session store failed; answering 503", slog.String("phase", p.String()), slog.String("error", err.Error()))
	s.metrics.message(p, outcomeUnavailable).Inc()
	s.metrics.latency[p].Observe(time.Since(start).Seconds())
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				header("retry-after", "1", false),
				header("cache-control", "no-store", false),
				header("content-type", "text/plain; charset=utf-8", false),
			}},
			Body:    []byte("503 session store unavailable\n"),
			Details: "proxysession_session_store_unavailable",
		},
	}}
}

// header returns a set_headers entry. The value goes in raw_value only:
// current Envoy ignores value, and rejects a HeaderValue with both.
func header(key, value string, appendValue bool) *corev3.HeaderValueOption {
	opt := &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, RawValue: readOnlyBytes(value)}}
	if appendValue {
		//lint:ignore SA1019 Envoy ignores append_action (envoyproxy/envoy#36982); append is the only way to add a second Set-Cookie
		opt.Append = wrapperspb.Bool(true)
	}
	return opt
}

// headerValue returns a header's value: raw_value, or value from an Envoy
// of 1.31 or older that still sends it there.
//
// The string shares raw_value's bytes instead of copying them: protobuf-go
// copies bytes fields when it unmarshals (grpc-go recycles its receive
// buffer right after), so the message owns them, nothing writes them, and
// the strings live no longer than the stream that holds the message.
// Whatever the engine keeps beyond the stream, it copies.
func headerValue(hv *corev3.HeaderValue) string {
	if raw := hv.GetRawValue(); len(raw) > 0 {
		return unsafe.String(&raw[0], len(raw))
	}
	return hv.GetValue()
}

// readOnlyBytes returns s's bytes without copying, for fields that are
// only marshalled: nothing may write to them.
func readOnlyBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// field names a header the processor reads.
type field uint8

const (
	fieldOther field = iota
	fieldAuthority
	fieldHost
	fieldPath
	fieldMethod
	fieldScheme
	fieldCookie
	fieldForwardedProto
	fieldFetchSite
	fieldFetchMode
	fieldFetchDest
	fieldSetCookie
	fieldClearSiteData
	fieldCacheControl
	// The binding headers (sessions.Config.UserHeader and the others),
	// by their default names; Server.responseField maps other names.
	fieldUser
	fieldSid
	fieldLogout
	fieldRotate
)

// fieldOf classifies a header key. Envoy's keys are lower case; others
// are lowered (strings.ToLower returns a lower-case key as it is).
func fieldOf(key string) field {
	if f := exactField(key); f != fieldOther {
		return f
	}
	if lower := strings.ToLower(key); lower != key {
		return exactField(lower)
	}
	return fieldOther
}

func exactField(key string) field {
	switch key {
	case ":authority":
		return fieldAuthority
	case "host":
		return fieldHost
	case ":path":
		return fieldPath
	case ":method":
		return fieldMethod
	case ":scheme":
		return fieldScheme
	case "cookie":
		return fieldCookie
	case "x-forwarded-proto":
		return fieldForwardedProto
	case "sec-fetch-site":
		return fieldFetchSite
	case "sec-fetch-mode":
		return fieldFetchMode
	case "sec-fetch-dest":
		return fieldFetchDest
	case "set-cookie":
		return fieldSetCookie
	case "clear-site-data":
		return fieldClearSiteData
	case "cache-control":
		return fieldCacheControl
	case "proxysession-user":
		return fieldUser
	case "proxysession-sid":
		return fieldSid
	case "proxysession-logout":
		return fieldLogout
	case "proxysession-rotate":
		return fieldRotate
	}
	return fieldOther
}
