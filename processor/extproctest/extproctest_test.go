package extproctest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// TestNewServer: the server answers ext_proc through the Envoy stand-in
// and reports its health as cmd/proxysession's does.
func TestNewServer(t *testing.T) {
	cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cache, processor.Options{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(srv.Close)
	browser := envoytest.NewBrowser(srv.Filter(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			w.Header().Add("Set-Cookie", "sid=42; Path=/")
			return
		}
		io.WriteString(w, r.Header.Get("Cookie"))
	})))
	for _, path := range []string{"/login", "/page"} {
		resp, err := browser.Get("https://app.test" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/page" && string(body) != "sid=42" {
			t.Errorf("backend saw %q", body)
		}
	}
	health := healthpb.NewHealthClient(srv.Conn)
	for _, service := range []string{"", processor.ServiceName} {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q = %v, %v", service, resp, err)
		}
	}
	stream, err := srv.Client.Process(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	resp := Send(t, stream, envoytest.RealisticRequest("a=1"))
	if resp.GetRequestHeaders() == nil {
		t.Errorf("reply %v", resp)
	}
}
