// Command extproc-bench measures what proxysession costs Envoy per request:
// it drives the full two-message ext_proc exchange (request headers, then
// response headers on the same stream) over real gRPC connections against
// proxysession and against a no-op ext_proc server, and reports requests
// per second, p50/p99 latency, and the server's CPU time per request.
//
// Each server runs in its own child process (this binary, re-executed),
// so its CPU time is measured apart from the load generator's. The
// proxysession-redis target uses the Redis store on -redis-addr (whose
// database it flushes first; Redis's own CPU is not counted).
//
//	go run ./cmd/extproc-bench -duration 10s -concurrency 32
//	go run ./cmd/extproc-bench -targets noop,proxysession,proxysession-redis -redis-addr 127.0.0.1:6379
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
)

func main() {
	var (
		serve       = flag.String("serve", "", "internal: run as the child server (noop or proxysession)")
		duration    = flag.Duration("duration", 5*time.Second, "measured load per target and round")
		warmup      = flag.Duration("warmup", time.Second, "unmeasured load before each measurement")
		concurrency = flag.Int("concurrency", 16, "requests in flight at most (Envoy: one stream per request in flight)")
		rate        = flag.Int("rate", 3000, "requests per second, paced, the same for every target (0: as fast as each target answers)")
		connections = flag.Int("connections", 2, "gRPC connections (Envoy: one per worker thread)")
		rounds      = flag.Int("rounds", 3, "alternating rounds per target; the report shows medians")
		nSessions   = flag.Int("sessions", 1000, "established sessions, each with 3 backend cookies")
		targets     = flag.String("targets", "noop,proxysession", "servers to measure, comma-separated: noop, proxysession, proxysession-redis")
		redisAddr   = flag.String("redis-addr", "", "Redis for the proxysession-redis target (e.g. a local redis-server on 127.0.0.1:6379)")
		cpuProfile  = flag.String("server-cpuprofile", "", "write a CPU profile of each server to this file, suffixed with the target's name")
	)
	flag.Parse()
	if *serve != "" {
		if err := child(*serve, *redisAddr, *cpuProfile); err != nil {
			fmt.Fprintln(os.Stderr, "extproc-bench child:", err)
			os.Exit(1)
		}
		return
	}
	b := &bench{rate: *rate, duration: *duration, warmup: *warmup, concurrency: *concurrency, connections: *connections, sessions: *nSessions, redisAddr: *redisAddr, cpuProfile: *cpuProfile}
	if err := b.run(strings.Split(*targets, ","), *rounds, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "extproc-bench:", err)
		os.Exit(1)
	}
}

// child serves ext_proc on loopback, prints "addr ADDR", then answers
// each "cpu" line on stdin with its CPU time so far in microseconds.
func child(kind, redisAddr, cpuProfile string) error {
	var opts []grpc.ServerOption
	if kind != "noop" {
		opts = append(opts, grpc.ForceServerCodecV2(processor.Codec())) // as cmd/proxysession
	}
	gs := grpc.NewServer(opts...)
	log := slog.New(slog.DiscardHandler)
	switch kind {
	case "noop":
		extprocv3.RegisterExternalProcessorServer(gs, noop{})
	case "proxysession", "proxysession-redis":
		cfg := sessions.Config{Logger: log}
		if kind == "proxysession-redis" {
			client := redis.NewClient(&redis.Options{Addr: redisAddr, ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
			defer client.Close()
			if err := client.FlushDB(context.Background()).Err(); err != nil {
				return fmt.Errorf("redis at %q: %w", redisAddr, err)
			}
			store, err := redisstore.New(client, redisstore.Options{Lifetime: sessions.DefaultLifetime, IdleTimeout: sessions.DefaultIdleTimeout, Logger: log})
			if err != nil {
				return err
			}
			cfg.Store = store
		}
		cache, err := sessions.New(cfg)
		if err != nil {
			return err
		}
		extprocv3.RegisterExternalProcessorServer(gs, processor.New(cache, processor.Options{Logger: log}))
	default:
		return fmt.Errorf("unknown server %q", kind)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go gs.Serve(lis)
	fmt.Printf("addr %s\n", lis.Addr())
	in := bufio.NewScanner(os.Stdin)
	profiling := false
	for in.Scan() {
		// The first "cpu" marks the start of the measurement.
		if cpuProfile != "" && !profiling {
			f, err := os.Create(cpuProfile + "." + kind)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
			profiling = true
		}
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return err
		}
		fmt.Printf("cpu %d\n", ru.Utime.Nano()/1e3+ru.Stime.Nano()/1e3)
	}
	gs.Stop()
	return nil
}

// noop is an ext_proc server that answers every message with an empty
// reply of its type: the floor any ext_proc service costs.
type noop struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (noop) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &extprocv3.ProcessingResponse{}
		switch req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}

type bench struct {
	rate                  int
	duration, warmup      time.Duration
	concurrency, sessions int
	connections           int
	redisAddr, cpuProfile string
}

// result is one measurement of one target.
type result struct {
	rps           float64
	p50, p99      time.Duration
	cpuPerRequest time.Duration
}

func (b *bench) run(targets []string, rounds int, out io.Writer) error {
	results := map[string][]result{}
	for round := range rounds {
		for _, target := range targets {
			r, err := b.measure(target)
			if err != nil {
				return fmt.Errorf("%s: %w", target, err)
			}
			fmt.Fprintf(os.Stderr, "round %d %-12s %8.0f req/s  p50 %-9v p99 %-9v CPU/req %v\n",
				round+1, target, r.rps, r.p50, r.p99, r.cpuPerRequest)
			results[target] = append(results[target], r)
		}
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "target\treq/s\tp50\tp99\tserver CPU/request\t\n")
	medians := map[string]result{}
	for _, target := range targets {
		m := median(results[target])
		medians[target] = m
		fmt.Fprintf(w, "%s\t%.0f\t%v\t%v\t%v\t\n", target, m.rps, m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond), m.cpuPerRequest.Round(100*time.Nanosecond))
	}
	w.Flush()
	fmt.Fprintln(out)
	for _, target := range targets {
		if n, p := medians["noop"], medians[target]; target != "noop" && n.rps > 0 && p.rps > 0 {
			fmt.Fprintf(out, "%s/noop: CPU per request %.2f×, req/s %.2f×, p50 %.2f×, p99 %.2f×\n", target,
				float64(p.cpuPerRequest)/float64(n.cpuPerRequest), p.rps/n.rps,
				float64(p.p50)/float64(n.p50), float64(p.p99)/float64(n.p99))
		}
	}
	load := "as fast as each target answers"
	if b.rate > 0 {
		load = fmt.Sprintf("paced at %d requests/s", b.rate)
	}
	fmt.Fprintf(out, "(medians of %d rounds of %v, %s; at most %d streams in flight over %d connections; %d sessions with 3 cookies; Set-Cookie on every 4th response)\n",
		rounds, b.duration, load, b.concurrency, b.connections, b.sessions)
	return nil
}

func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return result{
		rps:           pick(func(r result) float64 { return r.rps }),
		p50:           time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:           time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		cpuPerRequest: time.Duration(pick(func(r result) float64 { return float64(r.cpuPerRequest) })),
	}
}

// server is a running child.
type server struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	addr  string
}

func (b *bench) startServer(kind string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve", kind, "-redis-addr", b.redisAddr, "-server-cpuprofile", b.cpuProfile)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	line, err := s.line("addr ")
	if err != nil {
		s.stop()
		return nil, err
	}
	s.addr = line
	return s, nil
}

func (s *server) line(prefix string) (string, error) {
	if !s.out.Scan() {
		return "", errors.New("server exited")
	}
	line, ok := strings.CutPrefix(s.out.Text(), prefix)
	if !ok {
		return "", fmt.Errorf("unexpected line %q", s.out.Text())
	}
	return line, nil
}

// cpu returns the child's CPU time so far.
func (s *server) cpu() (time.Duration, error) {
	if _, err := io.WriteString(s.stdin, "cpu\n"); err != nil {
		return 0, err
	}
	line, err := s.line("cpu ")
	if err != nil {
		return 0, err
	}
	us, err := strconv.ParseInt(line, 10, 64)
	return time.Duration(us) * time.Microsecond, err
}

func (s *server) stop() {
	s.stdin.Close()
	s.cmd.Wait()
}

// measure runs warm-up and measured load against a fresh server.
func (b *bench) measure(kind string) (result, error) {
	srv, err := b.startServer(kind)
	if err != nil {
		return result{}, err
	}
	defer srv.stop()
	clients := make([]extprocv3.ExternalProcessorClient, b.connections)
	for i := range clients {
		conn, err := grpc.NewClient(srv.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return result{}, err
		}
		defer conn.Close()
		clients[i] = extprocv3.NewExternalProcessorClient(conn)
	}
	w, err := newWorkload(clients[0], b.sessions)
	if err != nil {
		return result{}, err
	}
	b.load(clients, w, b.warmup)
	before, err := srv.cpu()
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	latencies := b.load(clients, w, b.duration)
	elapsed := time.Since(start)
	after, err := srv.cpu()
	if err != nil {
		return result{}, err
	}
	if len(latencies) == 0 {
		return result{}, errors.New("no request completed")
	}
	slices.Sort(latencies)
	return result{
		rps:           float64(len(latencies)) / elapsed.Seconds(),
		p50:           latencies[len(latencies)/2],
		p99:           latencies[len(latencies)*99/100],
		cpuPerRequest: (after - before) / time.Duration(len(latencies)),
	}, nil
}

// load runs the workers for d and returns every request's latency. With
// a rate, requests are paced and each latency counts from the moment its
// request was due, so that a slow server's queueing is not hidden.
func (b *bench) load(clients []extprocv3.ExternalProcessorClient, w *workload, d time.Duration) []time.Duration {
	start := time.Now()
	deadline := start.Add(d)
	var due chan time.Time
	if b.rate > 0 {
		due = make(chan time.Time, b.rate)
		go func() {
			defer close(due)
			interval := time.Second / time.Duration(b.rate)
			for n := 0; ; n++ {
				at := start.Add(time.Duration(n) * interval)
				if at.After(deadline) {
					return
				}
				time.Sleep(time.Until(at))
				due <- at
			}
		}()
	}
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for worker := range b.concurrency {
		wg.Go(func() {
			client := clients[worker%len(clients)]
			var lat []time.Duration
			for i := worker; ; i += b.concurrency {
				begin := time.Now()
				if due != nil {
					at, ok := <-due
					if !ok {
						break
					}
					begin = at
				} else if begin.After(deadline) {
					break
				}
				if err := w.exchange(client, i); err != nil {
					fmt.Fprintln(os.Stderr, "request failed:", err)
					return
				}
				lat = append(lat, time.Since(begin))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all
}

// workload holds the messages Envoy would send: realistic browser request
// headers (16 with the pseudo-headers) carrying a session cookie and one
// browser cookie, and realistic response headers (8, plus a Set-Cookie on
// every 4th response).
type workload struct {
	requests              []*extprocv3.ProcessingRequest
	response, withCookies *extprocv3.ProcessingRequest
}

func requestMsg(cookie string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true, Headers: envoytest.HeaderMap(
			":authority", "app.example.com", ":path", "/app/dashboard?tab=overview", ":method", "GET", ":scheme", "https",
			"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
			"accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
			"accept-language", "en-US,en;q=0.9", "accept-encoding", "gzip, deflate, br, zstd",
			"referer", "https://app.example.com/app/", "sec-fetch-site", "same-origin", "sec-fetch-mode", "navigate",
			"sec-fetch-dest", "document", "sec-ch-ua", `"Chromium";v="131", "Not_A Brand";v="24"`,
			"cookie", cookie, "x-forwarded-proto", "https", "x-request-id", "0b0c2a55-8d8f-4a7e-9d6f-6f3c7c1b9e21",
		)}},
		MetadataContext: &corev3.Metadata{},
		ProtocolConfig:  &extprocv3.ProtocolConfiguration{},
	}
}

func responseMsg(setCookie bool) *extprocv3.ProcessingRequest {
	kv := []string{":status", "200", "content-type", "text/html; charset=utf-8", "content-length", "18234",
		"cache-control", "no-cache", "date", "Wed, 25 Nov 2026 12:00:00 GMT", "etag", `W/"4a3b-18c2f"`,
		"vary", "Accept-Encoding", "x-envoy-upstream-service-time", "12"}
	if setCookie {
		kv = append(kv, "set-cookie", "prefs=0123456789abcdef0123456789abcdef012; Path=/; Max-Age=31536000; SameSite=Lax")
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoytest.HeaderMap(kv...)}},
		MetadataContext: &corev3.Metadata{},
	}
}

// newWorkload logs in n sessions, each with three 35-byte backend
// cookies, and prepares a request message for each.
func newWorkload(client extprocv3.ExternalProcessorClient, n int) (*workload, error) {
	w := &workload{response: responseMsg(false), withCookies: responseMsg(true)}
	login := responseMsg(false)
	hm := login.GetResponseHeaders().Headers
	for _, c := range []string{"sid", "user", "prefs"} {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "set-cookie", RawValue: []byte(c + "=" + rand.Text()[:26] + "012345678; Path=/; HttpOnly; Secure")})
	}
	for range n {
		value := rand.Text() + rand.Text()[:17] // the noop server never issues one
		resps, err := roundTrip(client, requestMsg("theme=dark"), login)
		if err != nil {
			return nil, err
		}
		for _, o := range resps[1].GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
			if v, ok := strings.CutPrefix(string(o.GetHeader().GetRawValue()), sessions.DefaultCookieName+"="); ok {
				value, _, _ = strings.Cut(v, ";")
			}
		}
		w.requests = append(w.requests, requestMsg(sessions.DefaultCookieName+"="+value+"; theme=dark"))
	}
	return w, nil
}

// exchange is one HTTP request as Envoy sees it: a new stream, request
// headers, response headers, half-close and reset.
func (w *workload) exchange(client extprocv3.ExternalProcessorClient, i int) error {
	resp := w.response
	if i%4 == 0 {
		resp = w.withCookies
	}
	_, err := roundTrip(client, w.requests[i%len(w.requests)], resp)
	return err
}

func roundTrip(client extprocv3.ExternalProcessorClient, msgs ...*extprocv3.ProcessingRequest) ([]*extprocv3.ProcessingResponse, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // Envoy resets the stream after its half-close
	stream, err := client.Process(ctx)
	if err != nil {
		return nil, err
	}
	var out []*extprocv3.ProcessingResponse
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return nil, err
		}
		r, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, stream.CloseSend()
}
