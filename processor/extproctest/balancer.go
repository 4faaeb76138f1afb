package extproctest

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/proxysession/proxysession/processor"
)

// Balancer is an ext_proc client that spreads streams over several
// servers the way Envoy's cluster does: round robin over the hosts whose
// active gRPC health check passes. Each host is checked (service
// processor.ServiceName) every Interval; UnhealthyThreshold failed
// checks in a row (NOT_SERVING, an error, or no answer within Timeout)
// make it unhealthy, HealthyThreshold passing ones healthy again, and a
// host added starts unhealthy until its first check passes. When fewer
// than PanicThreshold percent of the hosts are healthy, Envoy's panic
// mode ignores health and spreads streams over all hosts; with no host
// at all, opening a stream fails with Unavailable (an envoytest.Filter
// turns either failure into Envoy's local reply 500). Use it as a
// Filter's Client.
type Balancer struct {
	// Interval is the health check interval; default 50ms.
	Interval time.Duration
	// Timeout bounds each check; default 1s, as in envoy/envoy.yaml.
	Timeout time.Duration
	// UnhealthyThreshold and HealthyThreshold are Envoy's; defaults 2
	// (envoy/envoy.yaml) and 1.
	UnhealthyThreshold, HealthyThreshold int
	// PanicThreshold is Envoy's healthy_panic_threshold in percent;
	// default 50, as Envoy's. Negative disables panic mode.
	PanicThreshold int

	mu     sync.Mutex
	hosts  []*balancedHost
	next   int
	closed bool
}

type balancedHost struct {
	addr    string
	conn    *grpc.ClientConn
	client  extprocv3.ExternalProcessorClient
	healthy atomic.Bool
	streams atomic.Int64
	stop    chan struct{}
	done    chan struct{}
}

// Add adds the server at addr (host:port) and starts checking its
// health. It gets streams once a check passes.
func (b *Balancer) Add(addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	h := &balancedHost{addr: addr, conn: conn, client: extprocv3.NewExternalProcessorClient(conn), stop: make(chan struct{}), done: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		conn.Close()
		return status.Error(codes.Canceled, "extproctest: balancer closed")
	}
	b.hosts = append(b.hosts, h)
	go h.check(b.interval(), cmp.Or(b.Timeout, time.Second), max(b.UnhealthyThreshold, 2), max(b.HealthyThreshold, 1))
	return nil
}

func (b *Balancer) interval() time.Duration {
	if b.Interval > 0 {
		return b.Interval
	}
	return 50 * time.Millisecond
}

// check runs the host's health checks until it is removed.
func (h *balancedHost) check(interval, timeout time.Duration, unhealthy, healthy int) {
	defer close(h.done)
	client := healthpb.NewHealthClient(h.conn)
	t := time.NewTicker(interval)
	defer t.Stop()
	fails, passes := 0, 0
	for first := true; ; first = false {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: processor.ServiceName})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			fails, passes = 0, passes+1
			if first || passes >= healthy {
				h.healthy.Store(true)
			}
		} else {
			fails, passes = fails+1, 0
			if fails >= unhealthy {
				h.healthy.Store(false)
			}
		}
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
	}
}

// Remove removes the server at addr: it gets no new streams, and its
// connection closes (streams in flight on it fail).
func (b *Balancer) Remove(addr string) {
	b.mu.Lock()
	var h *balancedHost
	if i := slices.IndexFunc(b.hosts, func(h *balancedHost) bool { return h.addr == addr }); i >= 0 {
		h = b.hosts[i]
		b.hosts = slices.Delete(b.hosts, i, i+1)
	}
	b.mu.Unlock()
	if h != nil {
		close(h.stop)
		<-h.done
		h.conn.Close()
	}
}

// Healthy reports whether the server at addr is known and healthy.
func (b *Balancer) Healthy(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.hosts {
		if h.addr == addr {
			return h.healthy.Load()
		}
	}
	return false
}

// WaitHealthy waits until the server at addr is healthy, or ctx is done.
func (b *Balancer) WaitHealthy(ctx context.Context, addr string) error {
	for !b.Healthy(addr) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(b.interval() / 4):
		}
	}
	return nil
}

// Streams returns how many streams each server got, by address.
func (b *Balancer) Streams() map[string]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]int64, len(b.hosts))
	for _, h := range b.hosts {
		m[h.addr] = h.streams.Load()
	}
	return m
}

// pick chooses the next host, or nil.
func (b *Balancer) pick() *balancedHost {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.hosts) == 0 {
		return nil
	}
	healthy := make([]*balancedHost, 0, len(b.hosts))
	for _, h := range b.hosts {
		if h.healthy.Load() {
			healthy = append(healthy, h)
		}
	}
	threshold := b.PanicThreshold
	if threshold == 0 {
		threshold = 50
	}
	candidates := healthy
	if threshold > 0 && 100*len(healthy) < threshold*len(b.hosts) {
		candidates = b.hosts // panic mode
	}
	if len(candidates) == 0 {
		return nil
	}
	b.next++
	return candidates[b.next%len(candidates)]
}

// Process implements extprocv3.ExternalProcessorClient.
func (b *Balancer) Process(ctx context.Context, opts ...grpc.CallOption) (extprocv3.ExternalProcessor_ProcessClient, error) {
	h := b.pick()
	if h == nil {
		return nil, status.Error(codes.Unavailable, "no healthy upstream")
	}
	h.streams.Add(1)
	return h.client.Process(ctx, opts...)
}

// Close removes every server.
func (b *Balancer) Close() {
	b.mu.Lock()
	b.closed = true
	addrs := make([]string, len(b.hosts))
	for i, h := range b.hosts {
		addrs[i] = h.addr
	}
	b.mu.Unlock()
	for _, a := range addrs {
		b.Remove(a)
	}
}
