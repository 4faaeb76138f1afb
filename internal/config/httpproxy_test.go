package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestHTTPProxyFlags(t *testing.T) {
	env := map[string]string{"PROXYSESSION_UPSTREAM_TIMEOUT": "5s"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := Parse([]string{"-http-addr", ":8080", "-upstream", "http://localhost:8081/app", "-grpc-addr", "off",
		"-preserve-host", "-trust-forwarded-headers", "-http-max-header-bytes", "32KiB"}, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.HTTP
	if cfg.GRPCAddr != "" || h.Addr != ":8080" || h.Upstream.String() != "http://localhost:8081/app" || h.UpstreamTimeout != 5*time.Second ||
		!h.PreserveHost || !h.TrustForwardedHeaders || h.MaxHeaderBytes != 32<<10 || !h.AccessLog {
		t.Errorf("parsed %+v, grpc %q", h, cfg.GRPCAddr)
	}
	// Beside the ext_proc server, by default.
	cfg, err = Parse([]string{"-http-addr", ":8080", "-upstream", "https://app.internal"}, lookup, io.Discard)
	if err != nil || cfg.GRPCAddr != DefaultGRPCAddr || cfg.HTTP.MaxHeaderBytes != DefaultHTTPMaxHeaderBytes {
		t.Errorf("cfg %+v, %v", cfg, err)
	}
	for args, want := range map[string]string{
		"-grpc-addr off": "off needs -http-addr",
		"-http-addr :8080 -upstream http://x -admin-addr :8080":          "is -admin-addr too",
		"-http-addr :8080 -upstream http://x -http-max-header-bytes 100": "between 1KiB and 16MiB",
		"-http-addr :8080 -upstream http://x?a=1":                        "no user information, query or fragment",
	} {
		if _, err := Parse(strings.Fields(args), lookup, io.Discard); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", args, err, want)
		}
	}
}
