package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestStateFileFlags(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	cfg, err := Parse(nil, env(map[string]string{"PROXYSESSION_STATE_FILE": "/var/lib/proxysession/sessions.state"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateFile != "/var/lib/proxysession/sessions.state" || cfg.StateInterval != time.Minute {
		t.Errorf("state file %q every %v", cfg.StateFile, cfg.StateInterval)
	}
	if cfg, err := Parse([]string{"-state-file", "s", "-state-interval", "0"}, env(nil), io.Discard); err != nil || cfg.StateInterval != 0 {
		t.Errorf("-state-interval 0: %v, %v", cfg, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-state-file", "s", "-store", "redis", "-redis-addr", "r:6379"}, "-state-file: only with -store memory"},
		{[]string{"-state-interval", "500ms"}, "-state-interval: 500ms: 0 (only on shutdown) or at least 1s"},
		{[]string{"-state-interval", "-1m"}, "-state-interval: -1m0s"},
	} {
		if _, err := Parse(tc.args, env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}
