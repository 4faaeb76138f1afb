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
// # Go proxies
//
// A Cache is the engine. Proxies that are Go http.Handlers wrap their
// handler with Cache.SessionHandler:
//
//	c, err := sessions.New(sessions.Config{
//		Lifetime:    8 * time.Hour,
//		IdleTimeout: 30 * time.Minute,
//		PassThrough: []string{"XSRF-TOKEN"},
//	})
//	if err != nil {
//		return err
//	}
//	http.ListenAndServeTLS(addr, cert, key, c.SessionHandler(backend, nil))
//
// Every zero field of Config takes a secure default. NewCache keeps the
// API of the inverting proxy's agent/sessions package, from which this
// one grew: NewCache(cookieName, lifetime, maxSessions, disableSSLForTest).
//
// # Other proxies
//
// Proxies that are not Go handlers (proxysession's Envoy ext_proc server)
// call Cache.Expand for each request and Cache.Capture for its response:
//
//	var x sessions.Exchange
//	err := c.Expand(ctx, &sessions.Request{Scheme: "https", Host: host, Path: path, Method: method, Cookies: cookieHeaders}, &x)
//	// forward with x.Cookie as the Cookie header if x.RewriteCookie
//	edit, err := c.Capture(ctx, &x, &sessions.Response{SetCookie: setCookies, ClearSiteData: csd, CacheControl: cc})
//	// remove Set-Cookie if edit.RemoveSetCookie, add edit.SetCookie,
//	// set Cache-Control to edit.CacheControl if not empty; always remove
//	// the fields named in edit.RemoveHeaders (the binding headers)
//
// An error from either means the store failed: the proxy must answer 503
// rather than forward a request without its cookies or a response with
// them.
//
// # Stores
//
// Sessions live in a Store (Find, Commit, Delete; "not found" is nil, nil,
// not an error): by default a MemoryStore, bounded in sessions and bytes
// and resistant to floods. Stores that serialise sessions get the
// per-cookie Changes of each exchange, so parallel requests of one session
// never undo each other's writes; package redisstore is such a store, on
// Redis or Valkey:
//
//	client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"redis:6379"}})
//	cfg, _ := sessions.Config{}.WithDefaults()
//	store, _ := redisstore.New(client, redisstore.Options{Lifetime: cfg.Lifetime, IdleTimeout: cfg.IdleTimeout})
//	c, err := sessions.New(sessions.Config{Store: store})
//
// # Binding sessions to users
//
// With Config.BindingKey set, a backend binds the current session to a
// user with a response header (Config.UserHeader, optionally SidHeader
// for the identity provider's session id), ends every session of that
// user on every replica (LogoutHeader: "user"), or asks for a new
// session id (RotateHeader). The proxy fills Response.User, Sid, Logout
// and Rotate from them and always removes them (ResponseEdit.RemoveHeaders),
// binding on or not. A login (a new or different user) gives the session
// a new id in the same response, its jar carried over; the old id keeps
// working for Config.RotationGrace. Users and sids are indexed by HMAC
// only; Cache.EndUserSessions, EndSidSessions, CountUserSessions and
// EndSessionByHandle work on the store's index (UserIndexStore: the
// MemoryStore and redisstore implement it), for every replica.
//
// # Security
//
// Session ids are 256 random bits (a lookup key and a secret); only ids
// the Cache issued are accepted, so a client cannot fix a session;
// sessions are created only when a backend sets a cookie; they end after
// an absolute lifetime, an idle timeout, or a backend's Clear-Site-Data:
// "cookies". With a Secure session cookie (the default) the
// browser-facing origin counts as secure whatever the last hop's scheme.
// Logs never contain cookie values or ids. The project's docs/security.md
// has the whole model.
package sessions
