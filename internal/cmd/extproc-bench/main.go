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
//	go run ./internal/cmd/extproc-bench -duration 10s -concurrency 32
//	go run ./internal/cmd/extproc-bench -targets noop,proxysession,proxysession-redis -redis-addr 127.0.0.1:6379
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
		targets     = flag.String("targets", "noop,proxysession", "servers to measure, comma-separated: noop, proxysession, proxysession-redis; a -forward-rules suffix sends only the headers Envoy's forward_rules let through (processor.ForwardedHeaders)")
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
	server, forwardRules := strings.CutSuffix(kind, "-forward-rules")
	srv, err := b.startServer(server)
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
	w, err := newWorkload(clients[0], b.sessions, forwardRules)
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
