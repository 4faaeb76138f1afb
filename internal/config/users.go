package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Users configures what the admin listener offers beyond health and
// metrics: the admin API ending and counting a user's sessions, and the
// OpenID Connect Back-Channel Logout endpoint.
type Users struct {
	// AdminTokenFile holds the admin API's bearer token; empty: the API
	// is off.
	AdminTokenFile string
	// Backchannel is the back-channel logout endpoint; off when
	// Backchannel.Issuer is empty.
	Backchannel Backchannel
}

// Backchannel configures OpenID Connect Back-Channel Logout.
type Backchannel struct {
	Issuer      string        // the identity provider's issuer URL
	Audience    string        // the client id the logout tokens are for
	JWKSURL     string        // the issuer's JWKS; "" to discover it
	MaxTokenAge time.Duration // reject tokens issued longer ago
}

// Back-channel logout defaults.
const DefaultBackchannelMaxTokenAge = 10 * time.Minute

// options declares the settings of the admin API and back-channel logout.
func (u *Users) options(o *options) {
	o.str(&u.AdminTokenFile, "admin-token-file", "", "turn on the admin API (/admin/v1/... on -admin-addr: end or count a user's sessions, end a session by handle), authenticated by the bearer token in this file (at least 32 bytes; re-read when it changes)")
	o.str(&u.Backchannel.Issuer, "backchannel-issuer", "", "turn on OpenID Connect Back-Channel Logout (POST /backchannel-logout on -admin-addr) for tokens of this issuer URL (its discovery document names the JWKS)")
	o.str(&u.Backchannel.Audience, "backchannel-audience", "", "with -backchannel-issuer: the client id logout tokens must be addressed to (aud)")
	o.str(&u.Backchannel.JWKSURL, "backchannel-jwks-url", "", "with -backchannel-issuer: the issuer's JWKS URL, instead of discovering it")
	o.duration(&u.Backchannel.MaxTokenAge, "backchannel-max-token-age", DefaultBackchannelMaxTokenAge, "with -backchannel-issuer: reject logout tokens issued (iat) longer ago; also how long a token id (jti) is remembered against replay")
}

// finishUsers validates the admin API and back-channel logout settings.
func (cfg *Config) finishUsers() []error {
	b := &cfg.Users.Backchannel
	var errs []error
	if (cfg.Users.AdminTokenFile != "" || b.Issuer != "") && cfg.bindingFiles.key == "" {
		errs = append(errs, errors.New("-admin-token-file, -backchannel-issuer: need -binding-key-file (they end the sessions bound to users)"))
	}
	if b.Issuer == "" {
		if b.Audience != "" || b.JWKSURL != "" {
			errs = append(errs, errors.New("-backchannel-audience, -backchannel-jwks-url: need -backchannel-issuer"))
		}
		return errs
	}
	if err := checkIdPURL(b.Issuer); err != nil {
		errs = append(errs, fmt.Errorf("-backchannel-issuer: %w", err))
	}
	if b.Audience == "" {
		errs = append(errs, errors.New("-backchannel-audience: required with -backchannel-issuer (the client id registered at the identity provider)"))
	}
	if b.JWKSURL != "" {
		if err := checkIdPURL(b.JWKSURL); err != nil {
			errs = append(errs, fmt.Errorf("-backchannel-jwks-url: %w", err))
		}
	}
	if b.MaxTokenAge < time.Second || b.MaxTokenAge > 24*time.Hour {
		errs = append(errs, fmt.Errorf("-backchannel-max-token-age: %v: must be between 1s and 24h", b.MaxTokenAge))
	}
	return errs
}

// checkIdPURL accepts an https URL, or http to a loopback host (for a
// local identity provider in development).
func checkIdPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("%q: must be https (http only to localhost)", s)
}
