// Package redistest runs a real redis-server (Debian's package) for tests,
// on a free loopback port, with an append-only file so that its data
// survives a kill and restart. StartSentinel and StartCluster run the
// replicated topologies (topology.go).
//
// Without redis-server the tests skip, except under CI=true, where they
// fail: CI installs it (.ci/run).
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is a running redis-server.
type Server struct {
	Addr string // 127.0.0.1:port
	t    testing.TB
	bin  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	// ready is the log line that says the server is up.
	ready string
}

// Start starts redis-server with extra arguments (such as
// "--requirepass", "secret") and stops it when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := lookPath(t)
	port, err := freePort(false)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, bin, port, "", extra...)
}

// lookPath finds redis-server, or skips the test (fails it under CI=true).
func lookPath(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is not installed, and CI=true: .ci/run installs it (apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the tests against a real Redis")
	}
	return bin
}

// startServer starts a data node on port, in a new temporary directory,
// with extra arguments, and kills it when the test ends. A config file
// (conf, or none when empty) comes first, as redis-server wants it.
func startServer(t testing.TB, bin string, port int, conf string, extra ...string) *Server {
	t.Helper()
	var args []string
	if conf != "" {
		args = append(args, conf)
	}
	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		bin:  bin,
		args: append(append(args,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
			"--save", "", "--appendonly", "yes", "--appendfsync", "always",
			"--logfile", "", "--daemonize", "no",
		), extra...),
		ready: "Ready to accept connections",
	}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// freePort returns a free loopback port; with bus, port+10000 (a cluster
// node's bus port) is free too.
func freePort(bus bool) (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			l.Close()
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		l.Close()
		if err == nil {
			b.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port pair for a cluster node")
}

// start runs the server and waits until it says it accepts connections.
func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, s.args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		var log strings.Builder
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			if !signalled {
				fmt.Fprintln(&log, line)
				if strings.Contains(line, s.ready) {
					ready <- nil
					signalled = true
				}
			}
		}
		if !signalled {
			ready <- fmt.Errorf("redis-server %s exited before accepting connections:\n%s", s.Addr, log.String())
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(s.done)
	}()
	select {
	case err := <-ready:
		if err != nil {
			s.t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		s.t.Fatalf("redis-server %s did not start within 30s", s.Addr)
	}
}

// Kill stops the server at once (SIGKILL), as a crash would. It is safe
// to call more than once.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again on the same port and data directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}
