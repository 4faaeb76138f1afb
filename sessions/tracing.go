package sessions

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// SessionState says what an exchange has done with its session so far.
type SessionState uint8

// Session states of an exchange.
const (
	SessionNone  SessionState = iota // no valid session
	SessionKnown                     // a valid session, named by the session cookie
	SessionNew                       // the response created the session
	SessionEnded                     // the exchange ended the session: logout, or found it expired or idle
)

var sessionStateNames = [...]string{"none", "known", "new", "ended"}

// String returns the state as a span attribute value, e.g. "known".
func (s SessionState) String() string {
	if int(s) < len(sessionStateNames) {
		return sessionStateNames[s]
	}
	return "unknown"
}

// ExchangeStats says what the engine did in one exchange, in numbers and
// reasons only: never a cookie's name or value, nor a session id. Tracing
// records it.
type ExchangeStats struct {
	// Session is what the exchange did with its session so far;
	// EndReason says why it ended, when Session is SessionEnded.
	Session   SessionState
	EndReason EndReason
	// UnknownSessionCookie: the request carried a session cookie that
	// names no valid session (malformed, unknown, evicted or expired).
	UnknownSessionCookie bool
	// SessionConflict: the request carried two different valid sessions
	// and was served without one.
	SessionConflict bool
	// CookiesSent counts the jar's cookies added to the request.
	CookiesSent int
	// CookiesCaptured, CookiesDeleted, CookiesPassed and CookiesRejected
	// count the response's Set-Cookie lines by what became of them: stored
	// (added or replaced), deleted (sent expired), passed through to the
	// browser, rejected. CookiesEvicted counts stored cookies pushed out
	// by the per-session limits.
	CookiesCaptured, CookiesDeleted, CookiesPassed, CookiesRejected int
	CookiesEvicted                                                  int
	// StoreRoundTrips counts the calls to a store that is not in-process
	// (each a network round trip with Redis); 0 with the memory store.
	StoreRoundTrips int

	rejected [numRejectReasons]uint16
}

// Rejected returns the number of cookies rejected for reason.
func (s *ExchangeStats) Rejected(reason RejectReason) int {
	if reason >= numRejectReasons {
		return 0
	}
	return int(s.rejected[reason])
}

func (s *ExchangeStats) reject(reason RejectReason) {
	s.CookiesRejected++
	if s.rejected[reason] < ^uint16(0) {
		s.rejected[reason]++
	}
}

// SessionState says what the exchange has done with its session so far.
func (x *Exchange) SessionState() SessionState {
	switch {
	case x.created:
		return SessionNew
	case x.ended:
		return SessionEnded
	case x.session != nil:
		return SessionKnown
	}
	return SessionNone
}

// Stats returns what the engine has done in the exchange so far.
func (x *Exchange) Stats() ExchangeStats {
	s := x.stats
	s.Session = x.SessionState()
	s.EndReason = x.endReason
	s.SessionConflict = x.conflict
	return s
}

// TracerName is the instrumentation scope of the phase spans.
const TracerName = "github.com/proxysession/proxysession/sessions"

// Phase is a step of an exchange that gets a span of its own.
type Phase uint8

// Phases of an exchange, named like the ext_proc messages.
const (
	PhaseRequest  Phase = iota // "request_headers": Expand
	PhaseResponse              // "response_headers": Capture
)

// String returns the phase's span name.
func (p Phase) String() string {
	if p == PhaseRequest {
		return "request_headers"
	}
	return "response_headers"
}

// Outcomes of a phase: the values of the proxysession.outcome attribute
// (and of the processor's outcome metric label).
const (
	OutcomeUnchanged   = "unchanged"   // the headers go on as they are
	OutcomeModified    = "modified"    // the headers were edited
	OutcomeUnavailable = "unavailable" // the store failed: answered 503
)

// Span attribute keys. No attribute ever holds a cookie's name or value,
// a session id or a header value.
const (
	AttrOutcome              = attribute.Key("proxysession.outcome")
	AttrSession              = attribute.Key("proxysession.session")
	AttrSessionEndReason     = attribute.Key("proxysession.session.end_reason")
	AttrUnknownSessionCookie = attribute.Key("proxysession.session.unknown_cookie")
	AttrSessionConflict      = attribute.Key("proxysession.session.conflict")
	AttrCookiesSent          = attribute.Key("proxysession.cookies.sent")
	AttrCookiesCaptured      = attribute.Key("proxysession.cookies.captured")
	AttrCookiesDeleted       = attribute.Key("proxysession.cookies.deleted")
	AttrCookiesPassed        = attribute.Key("proxysession.cookies.passed_through")
	AttrCookiesEvicted       = attribute.Key("proxysession.cookies.evicted")
	AttrCookiesRejected      = attribute.Key("proxysession.cookies.rejected")
	AttrStoreRoundTrips      = attribute.Key("proxysession.store.round_trips")
	// AttrCookiesRejected + "." + reason counts the rejections for one
	// reason, e.g. proxysession.cookies.rejected.public_suffix.
)

// rejectedKeys are the per-reason keys, made once.
var rejectedKeys = func() (keys [numRejectReasons]attribute.Key) {
	for r := RejectNone + 1; r < numRejectReasons; r++ {
		keys[r] = AttrCookiesRejected + attribute.Key("."+r.String())
	}
	return keys
}()

// Tracer makes the spans of the exchange phases, for SessionHandler and
// the ext_proc processor. A nil *Tracer makes none and costs nothing.
type Tracer struct{ tracer trace.Tracer }

// NewTracer returns a Tracer on tp, or nil (no spans) when tp is nil or
// a no-op provider.
func NewTracer(tp trace.TracerProvider) *Tracer {
	switch tp.(type) {
	case nil, noop.TracerProvider, *noop.TracerProvider:
		return nil
	}
	return &Tracer{tracer: tp.Tracer(TracerName)}
}

// PhaseSpan is the span of one phase; the zero value, from a nil Tracer,
// does nothing.
type PhaseSpan struct {
	span       trace.Span
	phase      Phase
	roundTrips int // x's StoreRoundTrips when the phase began
}

// Start begins the span of phase p of exchange x, a child of the span in
// ctx, and returns ctx with it: pass that to Expand or Capture.
func (t *Tracer) Start(ctx context.Context, p Phase, x *Exchange) (context.Context, PhaseSpan) {
	if t == nil {
		return ctx, PhaseSpan{}
	}
	s := PhaseSpan{phase: p}
	if p == PhaseResponse {
		s.roundTrips = x.stats.StoreRoundTrips
	}
	ctx, s.span = t.tracer.Start(ctx, p.String())
	return ctx, s
}

// End ends the span, recording what the phase did to x: modified tells
// whether the headers were edited, err is the engine's error (the store
// failed and the answer is 503).
func (s PhaseSpan) End(x *Exchange, modified bool, err error) {
	if s.span == nil {
		return
	}
	if s.span.IsRecording() {
		s.record(x, modified, err)
	}
	s.span.End()
}

// record sets the span's attributes, and its status for err.
func (s PhaseSpan) record(x *Exchange, modified bool, err error) {
	st := x.Stats()
	outcome := OutcomeUnchanged
	switch {
	case err != nil:
		outcome = OutcomeUnavailable
	case modified:
		outcome = OutcomeModified
	}
	var buf [16 + numRejectReasons]attribute.KeyValue
	a := append(buf[:0],
		AttrOutcome.String(outcome),
		AttrSession.String(st.Session.String()),
		AttrStoreRoundTrips.Int(st.StoreRoundTrips-s.roundTrips),
	)
	if st.Session == SessionEnded {
		a = append(a, AttrSessionEndReason.String(st.EndReason.String()))
	}
	if st.SessionConflict {
		a = append(a, AttrSessionConflict.Bool(true))
	}
	if s.phase == PhaseRequest {
		a = append(a, AttrCookiesSent.Int(st.CookiesSent))
		if st.UnknownSessionCookie {
			a = append(a, AttrUnknownSessionCookie.Bool(true))
		}
	} else {
		a = append(a,
			AttrCookiesCaptured.Int(st.CookiesCaptured),
			AttrCookiesRejected.Int(st.CookiesRejected),
		)
		if st.CookiesDeleted > 0 {
			a = append(a, AttrCookiesDeleted.Int(st.CookiesDeleted))
		}
		if st.CookiesPassed > 0 {
			a = append(a, AttrCookiesPassed.Int(st.CookiesPassed))
		}
		if st.CookiesEvicted > 0 {
			a = append(a, AttrCookiesEvicted.Int(st.CookiesEvicted))
		}
		for r := RejectNone + 1; r < numRejectReasons; r++ {
			if n := st.Rejected(r); n > 0 {
				a = append(a, rejectedKeys[r].Int(n))
			}
		}
	}
	s.span.SetAttributes(a...)
	if err != nil {
		// The engine's errors name the operation and the store's failure
		// (timeouts, connection errors), never a session id or a cookie.
		s.span.SetStatus(codes.Error, err.Error())
	}
}

// modifies reports whether the edit changes the response.
func (e *ResponseEdit) modifies() bool {
	return e.RemoveSetCookie || len(e.SetCookie) > 0 || e.CacheControl != ""
}
