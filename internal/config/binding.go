package config

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/proxysession/proxysession/sessions"
)

// bindingFiles are the key files of session binding, read by finish.
type bindingFiles struct{ key, previous string }

// bindingOptions declares the settings of session binding (users,
// logout everywhere, id rotation: docs/security.md).
func (cfg *Config) bindingOptions(o *options) {
	sc := &cfg.Sessions
	o.str(&cfg.bindingFiles.key, "binding-key-file", "", "turn on session binding: the backend's -user-header binds a session to a user, -logout-header ends all of the user's sessions, a login rotates the session id; user ids and sids are indexed by an HMAC under the key in this file (at least 32 bytes)")
	o.str(&cfg.bindingFiles.previous, "binding-previous-key-file", "", "with -binding-key-file: the key before a rotation, which still finds the bindings made under it")
	o.str(&sc.UserHeader, "user-header", sessions.DefaultUserHeader, "response header by which the backend binds the session to a user id; always removed from responses")
	o.str(&sc.SidHeader, "sid-header", sessions.DefaultSidHeader, "response header by which the backend names the identity provider's session id (for back-channel logout); always removed from responses")
	o.str(&sc.LogoutHeader, "logout-header", sessions.DefaultLogoutHeader, "response header by which the backend ends every session of the session's user (user or all) or the session (session); always removed from responses")
	o.str(&sc.RotateHeader, "rotate-header", sessions.DefaultRotateHeader, "response header by which the backend asks for a new session id (a privilege change); always removed from responses")
	o.str(&sc.SessionHandleHeader, "session-handle-header", "Proxysession-Session-Handle", "with -binding-key-file: request header carrying a bound session's handle (for the admin API) to the backend; the browser's own is removed; empty: none")
	o.duration(&sc.RotationGrace, "rotation-grace", sessions.DefaultRotationGrace, "how long a rotated session's old id keeps working for requests already in flight")
}

// finishBinding reads the binding keys.
func (cfg *Config) finishBinding() []error {
	var errs []error
	read := func(flag, file string) []byte {
		if file == "" {
			return nil
		}
		b, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, fmt.Errorf("-%s: %w", flag, err))
			return nil
		}
		b = bytes.TrimSpace(b)
		if len(b) < sessions.MinBindingKeyBytes {
			errs = append(errs, fmt.Errorf("-%s: the key is %d bytes, must be at least %d", flag, len(b), sessions.MinBindingKeyBytes))
			return nil
		}
		return b
	}
	cfg.Sessions.BindingKey = read("binding-key-file", cfg.bindingFiles.key)
	cfg.Sessions.PreviousBindingKey = read("binding-previous-key-file", cfg.bindingFiles.previous)
	if cfg.bindingFiles.previous != "" && cfg.bindingFiles.key == "" {
		errs = append(errs, fmt.Errorf("-binding-previous-key-file: needs -binding-key-file"))
	}
	if cfg.Sessions.BindingKey == nil {
		cfg.Sessions.SessionHandleHeader = "" // no handles without binding
	}
	if g := cfg.Sessions.RotationGrace; g < 0 || g > time.Minute {
		errs = append(errs, fmt.Errorf("-rotation-grace: %v: must be between 0 and 1m", g))
	}
	return errs
}
