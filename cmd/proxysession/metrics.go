package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxysession/proxysession/sessions"
)

// sessionsCollector exports a sessions.Cache's counters. It reads one
// Stats snapshot per scrape, so the engine's hot path only bumps atomics.
type sessionsCollector struct {
	cache *sessions.Cache

	active, created, ended, unknownIDs *prometheus.Desc
	conflicts                          *prometheus.Desc
	stored, deleted, evicted, passed   *prometheus.Desc
	rejected, rotations                *prometheus.Desc
	storeFailures, undecryptable       *prometheus.Desc
	storeRefused, storeBytes           *prometheus.Desc
}

func newSessionsCollector(cache *sessions.Cache) *sessionsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("proxysession_"+name, help, labels, nil)
	}
	return &sessionsCollector{
		cache:         cache,
		active:        d("sessions_active", "Sessions held by the store (memory store only)."),
		created:       d("sessions_created_total", "Sessions created (a backend set the first cookie)."),
		ended:         d("sessions_ended_total", "Sessions ended, by reason: expired (absolute lifetime), idle, evicted (memory store full), logout (Clear-Site-Data), user_logout (the backend's logout header ended every session of the user), admin, backchannel.", "reason"),
		rotations:     d("session_rotations_total", "Session ids replaced by new ones (a login, or the backend's rotate header)."),
		unknownIDs:    d("unknown_session_ids_total", "Session cookies presented with a malformed, unknown, evicted or expired id."),
		conflicts:     d("session_conflicts_total", "Requests that carried two different valid session cookies (one tossed from a sibling subdomain) and were served without a session."),
		stored:        d("cookies_captured_total", "Backend cookies stored in a session's jar (added or replaced)."),
		deleted:       d("cookies_deleted_total", "Backend cookies deleted by the backend (sent already expired)."),
		evicted:       d("cookies_evicted_total", "Stored cookies evicted by the per-session limits."),
		passed:        d("cookies_passed_through_total", "Pass-through cookies sent on to the browser."),
		rejected:      d("cookies_rejected_total", "Backend cookies rejected, by reason (RFC 6265bis rule or session policy).", "reason"),
		storeFailures: d("store_failures_total", "Operations of the shared session store that failed (timeouts, Redis down); the requests concerned got 503."),
		undecryptable: d("store_undecryptable_records_total", "Records of the shared session store that failed authentication (tampered with, or corrupt) and were ignored."),
		storeRefused:  d("store_refused_cookies_total", "Cookies the shared session store refused to keep, enforcing the per-session limits on parallel writes."),
		storeBytes:    d("store_bytes", "Estimated heap of the sessions the memory store holds; bounded by -max-memory."),
	}
}

func (c *sessionsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.created, c.ended, c.unknownIDs, c.conflicts, c.stored, c.deleted, c.evicted, c.passed, c.rejected, c.rotations, c.storeFailures, c.undecryptable, c.storeRefused, c.storeBytes} {
		ch <- d
	}
}

func (c *sessionsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.cache.Stats()
	if s.SessionsActive >= 0 {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(s.SessionsActive))
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.created, s.SessionsCreated)
	for reason, n := range s.SessionsEnded {
		counter(c.ended, n, reason.String())
	}
	counter(c.unknownIDs, s.UnknownSessionIDs)
	counter(c.conflicts, s.SessionConflicts)
	counter(c.stored, s.CookiesStored)
	counter(c.deleted, s.CookiesDeleted)
	counter(c.evicted, s.CookiesEvicted)
	counter(c.passed, s.CookiesPassed)
	counter(c.rotations, s.Rotations)
	for reason, n := range s.CookiesRejected {
		counter(c.rejected, n, reason.String())
	}
	counter(c.storeFailures, s.Store.Failures)
	counter(c.undecryptable, s.Store.Undecryptable)
	counter(c.storeRefused, s.Store.Refused)
	if s.Store.Bytes >= 0 {
		ch <- prometheus.MustNewConstMetric(c.storeBytes, prometheus.GaugeValue, float64(s.Store.Bytes))
	}
}
