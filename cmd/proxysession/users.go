package main

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxysession/proxysession/internal/admin"
	"github.com/proxysession/proxysession/internal/backchannel"
	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/sessions"
)

// adminRoute is a route of the admin listener beyond health and metrics.
type adminRoute struct {
	pattern string
	handler http.Handler
}

// BackchannelLogoutPath is where the identity provider posts logout
// tokens, on the admin listener.
const BackchannelLogoutPath = "/backchannel-logout"

// userRoutes returns the admin API (with -admin-token-file) and the
// back-channel logout endpoint (with -backchannel-issuer), on cache.
// Their requests are counted in reg.
func userRoutes(cfg *config.Config, cache *sessions.Cache, reg prometheus.Registerer, log *slog.Logger) ([]adminRoute, error) {
	u := cfg.Users
	var routes []adminRoute
	if u.AdminTokenFile == "" && u.Backchannel.Issuer == "" {
		return nil, nil
	}
	if cache.BindingKeyHash("") == "" {
		log.Warn("the admin API and back-channel logout need sessions bound to users (-binding-key-file): without it they answer 501")
	}
	if u.AdminTokenFile != "" {
		tok, err := admin.LoadToken(u.AdminTokenFile, log)
		if err != nil {
			return nil, &usageError{fmt.Errorf("-admin-token-file: %w", err)}
		}
		calls := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_admin_api_requests_total",
			Help: "Calls of the admin API, by operation and outcome (ok, unauthorized, bad_request, not_bound, error).",
		}, []string{"op", "outcome"})
		if err := reg.Register(calls); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
		observe := func(op, outcome string) { calls.WithLabelValues(op, outcome).Inc() }
		routes = append(routes, adminRoute{admin.Prefix, admin.New(cache, tok, log.With(slog.String("component", "admin-api")), observe)})
	}
	if b := u.Backchannel; b.Issuer != "" {
		logouts := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxysession_backchannel_logout_requests_total",
			Help: "Back-channel logout requests, by outcome: ok, or the reason the logout token was refused (bad_signature, expired, replayed, ...).",
		}, []string{"outcome"})
		if err := reg.Register(logouts); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
		h, err := backchannel.New(backchannel.Config{
			Observe:     func(outcome string) { logouts.WithLabelValues(outcome).Inc() },
			Issuer:      b.Issuer,
			Audience:    b.Audience,
			JWKSURL:     b.JWKSURL,
			MaxTokenAge: b.MaxTokenAge,
			Sessions:    cache,
			Logger:      log.With(slog.String("component", "backchannel-logout")),
		})
		if err != nil {
			return nil, &usageError{err}
		}
		routes = append(routes, adminRoute{"POST " + BackchannelLogoutPath, h})
	}
	return routes, nil
}
