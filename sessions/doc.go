// Package sessions implements proxy-side user sessions for reverse proxies.
//
// A backend's cookies never reach the browser: the proxy keeps them in a
// server-side cookie jar that belongs to the user's session, and gives the
// browser one opaque session cookie instead. On each request the proxy
// swaps the session cookie for the jar's cookies that match the request,
// so the backend sees the cookies it set. Because the browser holds only
// the session cookie, the proxy administrator controls cookie policy:
// lifetimes, Secure, HttpOnly and SameSite.
//
// The jar follows the browser algorithms of RFC 6265bis: Set-Cookie
// parsing, the cookie-date algorithm, domain and path matching with the
// public suffix list, Secure and the __Secure-/__Host- prefixes, SameSite
// from the Fetch Metadata headers, and per-domain and per-session limits.
//
// A Cache is the engine. Proxies that are Go http.Handlers wrap their
// handler with Cache.SessionHandler, the API of the inverting proxy's
// sessions package from which this one grew:
//
//	c := sessions.NewCache("proxy-session", 24*time.Hour, 10000, false)
//	http.ListenAndServeTLS(addr, cert, key, c.SessionHandler(backend, nil))
//
// Other proxies (proxysession's Envoy ext_proc server) call Cache.Expand
// for each request and Cache.Capture for its response. Sessions live in a
// Store: by default a bounded, scan-resistant MemoryStore.
//
// Security properties: session ids are 256 random bits (a lookup key and a
// secret); only ids the Cache issued are accepted, so a client cannot fix
// a session; sessions are created only when a backend sets a cookie; they
// end after an absolute lifetime, an idle timeout, or a backend's
// Clear-Site-Data: "cookies". Logs never contain cookie values or ids.
package sessions
