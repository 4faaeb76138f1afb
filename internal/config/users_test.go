package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUsersOptions(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	keyFile := filepath.Join(t.TempDir(), "binding-key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	bk := []string{"-binding-key-file", keyFile}
	cfg, err := Parse([]string{"-binding-key-file", keyFile, "-admin-token-file", "/run/secrets/admin-token", "-backchannel-issuer", "https://idp.example/realms/r", "-backchannel-audience", "app"}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Users.AdminTokenFile != "/run/secrets/admin-token" || cfg.Users.Backchannel.Issuer != "https://idp.example/realms/r" || cfg.Users.Backchannel.Audience != "app" || cfg.Users.Backchannel.MaxTokenAge != 10*time.Minute {
		t.Fatalf("%+v", cfg.Users)
	}
	if _, err := Parse(append(bk, "-backchannel-issuer", "http://127.0.0.1:8080/realms/r", "-backchannel-audience", "app"), noEnv, io.Discard); err != nil {
		t.Fatalf("loopback http issuer: %v", err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-backchannel-issuer", "https://idp.example"}, "-backchannel-audience: required"},
		{[]string{"-admin-token-file", "/t"}, "need -binding-key-file"},
		{[]string{"-backchannel-issuer", "https://idp.example", "-backchannel-audience", "app"}, "need -binding-key-file"},
		{[]string{"-backchannel-audience", "app"}, "need -backchannel-issuer"},
		{[]string{"-backchannel-issuer", "http://idp.example", "-backchannel-audience", "app"}, "must be https"},
		{[]string{"-backchannel-issuer", "idp.example", "-backchannel-audience", "app"}, "not an absolute URL"},
		{[]string{"-backchannel-issuer", "https://idp.example", "-backchannel-audience", "app", "-backchannel-jwks-url", "http://idp.example/keys"}, "-backchannel-jwks-url"},
		{[]string{"-backchannel-issuer", "https://idp.example", "-backchannel-audience", "app", "-backchannel-max-token-age", "0s"}, "-backchannel-max-token-age"},
	} {
		args := tc.args
		if !strings.Contains(tc.want, "binding-key-file") {
			args = append(append([]string{}, bk...), args...)
		}
		if _, err := Parse(args, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}
