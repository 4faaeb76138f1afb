package sessions

import "time"

// This file is the API of the inverting proxy's agent/sessions package,
// from which this package grew, for the proxies that use it: NewCache,
// and the metrics that Cache.SessionHandler records. New proxies use New.

// ResponseCodeMetrics records the status codes of responses. The inverting
// proxy's *metrics.MetricHandler satisfies it.
type ResponseCodeMetrics interface {
	WriteResponseCodeMetric(statusCode int) error
}

// NewCache returns a Cache with an in-memory store, configured as the
// inverting proxy's sessions package was: the session cookie's name, the
// session lifetime, the maximum number of sessions, and whether the
// session cookie may travel over plain http (disableSSLForTest). A
// non-positive lifetime or limit takes the default. For everything else
// use New.
//
// NewCache panics if the cookie name is invalid, or if disableSSLForTest
// is set with a __Host- or __Secure- name: a misconfigured session layer
// must not start, or backend cookies would reach browsers.
func NewCache(sessionCookieName string, sessionCookieTimeout time.Duration, cookieCacheLimit int, disableSSLForTest bool) *Cache {
	c, err := New(Config{
		CookieName:     sessionCookieName,
		InsecureCookie: disableSSLForTest,
		Lifetime:       max(sessionCookieTimeout, 0),
		MaxSessions:    max(cookieCacheLimit, 0),
	})
	if err != nil {
		panic(err)
	}
	return c
}
