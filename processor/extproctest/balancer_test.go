package extproctest

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// TestBalancer: streams go round robin to the healthy servers only; with
// fewer than half healthy, to all (Envoy's panic mode); with none, the
// Filter answers 500.
func TestBalancer(t *testing.T) {
	servers := make([]*Server, 3)
	for i := range servers {
		cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = NewServer(cache, processor.Options{Logger: slog.New(slog.DiscardHandler)})
		t.Cleanup(servers[i].Close)
	}
	b := &Balancer{Interval: 10 * time.Millisecond}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := b.Add(s.Addr); err != nil {
			t.Fatal(err)
		}
		if err := b.WaitHealthy(ctx, s.Addr); err != nil {
			t.Fatal(err)
		}
	}
	f := &envoytest.Filter{Client: b, Backend: http.NotFoundHandler(), MessageTimeout: 5 * time.Second}
	browser := envoytest.NewBrowser(f)
	get := func(n int) (codes map[int]int, streams map[string]int64) {
		before := b.Streams()
		codes = map[int]int{}
		for range n {
			resp, err := browser.Get("https://app.test/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			codes[resp.StatusCode]++
		}
		streams = b.Streams()
		for a := range streams {
			streams[a] -= before[a]
		}
		return codes, streams
	}
	if _, streams := get(30); streams[servers[0].Addr] != 10 || streams[servers[1].Addr] != 10 {
		t.Errorf("all healthy: streams %v, want 10 each", streams)
	}
	waitUnhealthy := func(s *Server) {
		s.Health.SetServingStatus(processor.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
		for b.Healthy(s.Addr) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitUnhealthy(servers[0])
	if codes, streams := get(20); streams[servers[0].Addr] != 0 || codes[404] != 20 {
		t.Errorf("one unhealthy: streams %v, codes %v", streams, codes)
	}
	waitUnhealthy(servers[1])
	if codes, streams := get(30); streams[servers[0].Addr] != 10 || codes[404] != 30 {
		t.Errorf("panic mode: streams %v, codes %v", streams, codes)
	}
	for _, s := range servers {
		b.Remove(s.Addr)
	}
	if codes, _ := get(1); codes[500] != 1 {
		t.Errorf("no hosts: codes %v, want a 500", codes)
	}
}
