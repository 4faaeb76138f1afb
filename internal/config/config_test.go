package config

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c *Config)
		errs  []string // substrings of the error, in any order
	}{
		{name: "defaults", check: func(t *testing.T, c *Config) {
			if c.GRPCAddr != ":9002" || c.AdminAddr != ":9090" || !c.cookieSecure || c.Sessions.InsecureCookie ||
				c.ShutdownGrace != 15*time.Second || c.LogFormat != "text" || c.LogLevel != slog.LevelInfo {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "flags", args: []string{"-grpc-addr", "unix:///run/ps.sock", "-cookie-secure=false", "-cookie-samesite", "Strict",
			"-pass-through-cookies", " XSRF-TOKEN, _xsrf ,", "-session-lifetime", "8h", "-idle-timeout", "30m", "-log-level", "debug"},
			check: func(t *testing.T, c *Config) {
				if c.GRPCAddr != "unix:///run/ps.sock" || !c.Sessions.InsecureCookie || c.Sessions.SameSite.String() != "Strict" ||
					strings.Join(c.Sessions.PassThrough, ",") != "XSRF-TOKEN,_xsrf" || c.Sessions.Lifetime != 8*time.Hour ||
					c.Sessions.IdleTimeout != 30*time.Minute || c.LogLevel != slog.LevelDebug {
					t.Errorf("config = %+v", c)
				}
			}},
		{name: "environment", env: map[string]string{"PROXYSESSION_MAX_SESSIONS": "42", "PROXYSESSION_TRUST_FORWARDED_PROTO": "true", "PROXYSESSION_LOG_FORMAT": "json"},
			check: func(t *testing.T, c *Config) {
				if c.Sessions.MaxSessions != 42 || !c.Sessions.TrustForwardedProto || c.LogFormat != "json" {
					t.Errorf("config = %+v", c)
				}
			}},
		{name: "flag wins over environment", args: []string{"-max-sessions", "7"}, env: map[string]string{"PROXYSESSION_MAX_SESSIONS": "nonsense"},
			check: func(t *testing.T, c *Config) {
				if c.Sessions.MaxSessions != 7 {
					t.Errorf("max sessions = %d", c.Sessions.MaxSessions)
				}
			}},
		{name: "every error at once",
			args: []string{"-session-lifetime", "soon", "-cookie-samesite", "sometimes", "-log-format", "xml", "-tls-cert", "c.pem", "stray"},
			env:  map[string]string{"PROXYSESSION_MAX_SESSIONS": "many", "PROXYSESSION_COOKIE_SECURE": "maybe"},
			errs: []string{`-session-lifetime: "soon" is not a duration`, `-cookie-samesite: "sometimes"`, `-log-format: "xml"`,
				"-tls-cert and -tls-key", `unexpected arguments ["stray"]`, `$PROXYSESSION_MAX_SESSIONS: "many" is not an integer`,
				`$PROXYSESSION_COOKIE_SECURE: "maybe" is not a boolean`}},
		{name: "engine rules", args: []string{"-cookie-secure=false", "-cookie-name", "__Host-s", "-idle-timeout", "48h", "-max-cookies-per-domain", "3"},
			errs: []string{"prefixes need a Secure cookie", "idle timeout 48h0m0s", "max cookies per domain 3"}},
		{name: "samesite none needs secure", args: []string{"-cookie-secure=false", "-cookie-samesite", "none"}, errs: []string{"SameSite=None needs a Secure"}},
		{name: "mtls needs tls", args: []string{"-tls-client-ca", "ca.pem"}, errs: []string{"-tls-client-ca: needs -tls-cert"}},
		{name: "bad unix address", args: []string{"-grpc-addr", "unix://"}, errs: []string{"names no socket path"}},
		{name: "unknown flag", args: []string{"-no-such-flag"}, errs: []string{"flag provided but not defined"}},
		{name: "redis store", args: []string{"-store", "redis", "-redis-addr", "r1:6379, r2:6379", "-redis-sentinel-master", "mymaster", "-redis-db", "2"},
			env: map[string]string{"PROXYSESSION_REDIS_PASSWORD": "pw"},
			check: func(t *testing.T, c *Config) {
				if c.Store != "redis" || strings.Join(c.Redis.Addrs, ",") != "r1:6379,r2:6379" || c.Redis.SentinelMaster != "mymaster" ||
					c.Redis.DB != 2 || c.Redis.Password != "pw" || c.Redis.Timeout != 100*time.Millisecond || c.Redis.KeyPrefix != "proxysession:" {
					t.Errorf("redis config = %+v", c.Redis)
				}
			}},
		{name: "redis url", args: []string{"-store", "redis", "-redis-url", "rediss://u:p@cache:6380/1"}, check: func(t *testing.T, c *Config) {
			if c.Redis.URL == "" {
				t.Error("no URL")
			}
		}},
		{name: "redis settings ignored with the memory store", env: map[string]string{"PROXYSESSION_REDIS_ADDR": "redis:6379"}, check: func(t *testing.T, c *Config) {
			if c.Store != "memory" {
				t.Errorf("store %q", c.Store)
			}
		}},
		{name: "redis errors", args: []string{"-store", "redis", "-redis-timeout", "5s", "-redis-tls-ca", "ca.pem"},
			errs: []string{"give -redis-addr or -redis-url", "-redis-timeout: 5s", "-redis-tls-ca: needs -redis-tls"}},
		{name: "redis conflicts", args: []string{"-store", "redis", "-redis-addr", "noport", "-redis-url", "redis://x", "-redis-cluster", "-redis-sentinel-master", "m", "-redis-db", "3"},
			errs: []string{"give one, not both", `"noport" is not host:port`, "choose one", "-redis-db: 3"}},
		{name: "bad redis url", args: []string{"-store", "redis", "-redis-url", "http://x"}, errs: []string{"-redis-url:"}},
		{name: "redis wait replicas", args: []string{"-store", "redis", "-redis-addr", "s1:26379,s2:26379", "-redis-sentinel-master", "m", "-redis-wait-replicas", "1"},
			check: func(t *testing.T, c *Config) {
				if c.Redis.WaitReplicas != 1 {
					t.Errorf("WaitReplicas = %d", c.Redis.WaitReplicas)
				}
			}},
		{name: "redis wait replicas with a cluster", args: []string{"-store", "redis", "-redis-addr", "n1:6379", "-redis-cluster", "-redis-wait-replicas", "1"},
			errs: []string{"-redis-wait-replicas: 1: for a single server or Sentinel"}},
		{name: "redis wait replicas negative", args: []string{"-store", "redis", "-redis-addr", "r:6379", "-redis-wait-replicas", "-1"},
			errs: []string{"-redis-wait-replicas: -1"}},
		{name: "unknown store", args: []string{"-store", "etcd"}, errs: []string{`-store: "etcd"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			c, err := Parse(tt.args, lookup, io.Discard)
			if len(tt.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				tt.check(t, c)
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tt.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q:\n%v", want, err)
				}
			}
		})
	}
}

func TestParseMaxMemory(t *testing.T) {
	lookup := func(env map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	}
	c, err := Parse(nil, lookup(nil), io.Discard)
	if err != nil || c.Sessions.MaxMemory != 256<<20 {
		t.Fatalf("default max memory = %d, %v; want 256 MiB", c.Sessions.MaxMemory, err)
	}
	for text, want := range map[string]int64{
		"1GiB": 1 << 30, "256MiB": 256 << 20, "512Mi": 512 << 20, "1048576": 1 << 20, "2 GB": 2e9,
		"1G": 1e9, "4096KiB": 4 << 20, "3145728B": 3 << 20,
	} {
		c, err := Parse([]string{"-max-memory", text}, lookup(nil), io.Discard)
		if err != nil || c.Sessions.MaxMemory != want {
			t.Errorf("-max-memory %s = %d, %v; want %d", text, c.Sessions.MaxMemory, err, want)
		}
	}
	c, err = Parse(nil, lookup(map[string]string{"PROXYSESSION_MAX_MEMORY": "384MiB"}), io.Discard)
	if err != nil || c.Sessions.MaxMemory != 384<<20 {
		t.Errorf("PROXYSESSION_MAX_MEMORY=384MiB: %d, %v", c.Sessions.MaxMemory, err)
	}
	for text, msg := range map[string]string{
		"lots":        `-max-memory: "lots" is not a size`,
		"1.5GiB":      `"1.5GiB" is not a size`,
		"-5MiB":       `"-5MiB" is not a size`,
		"99999999TiB": `"99999999TiB" is not a size`,
		"GiB":         `"GiB" is not a size`,
		"100KiB":      "max memory 102400 bytes: must be at least 1 MiB",
		"1MiB 2KB":    `is not a size`,
	} {
		_, err := Parse([]string{"-max-memory", text}, lookup(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("-max-memory %s: error %v, want one mentioning %q", text, err, msg)
		}
	}
	var usage strings.Builder
	Parse([]string{"-help"}, lookup(nil), &usage)
	if !strings.Contains(usage.String(), "default 256MiB, env PROXYSESSION_MAX_MEMORY") {
		t.Errorf("usage does not show -max-memory's default and variable:\n%s", usage.String())
	}
}
