package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/processor/extproctest"
)

// stepLoad is a set of browsers that step through an app for as long as
// the test runs: each request carries the cookies the backend set so far,
// and the backend checks, on every request, that it got exactly those
// (who=<browser>; n=<the last step the browser saw succeed>), then sets
// n to the next step. A cookie lost anywhere (a write dropped, a session
// lost, a stale read) is a request the backend answers 409.
type stepLoad struct {
	f    *envoytest.Filter
	stop chan struct{}
	wg   sync.WaitGroup

	backendCalls, ok, lost, failed atomic.Int64
	steps                          []atomic.Int64 // per browser: the last step that succeeded

	mu       sync.Mutex
	failures map[string]int // failed requests by status and Envoy's response code details
	lostLog  []string
}

// newStepLoad starts n browsers whose requests go through client.
func newStepLoad(t *testing.T, b *extproctest.Balancer, n int) *stepLoad {
	l := &stepLoad{stop: make(chan struct{}), steps: make([]atomic.Int64, n), failures: map[string]int{}}
	l.f = &envoytest.Filter{Client: b, Backend: http.HandlerFunc(l.backend), MessageTimeout: 5 * time.Second}
	for i := range n {
		l.wg.Go(func() { l.browse(i) })
	}
	t.Cleanup(l.halt)
	return l
}

func (l *stepLoad) backend(w http.ResponseWriter, r *http.Request) {
	l.backendCalls.Add(1)
	q := r.URL.Query()
	who := q.Get("b")
	switch r.URL.Path {
	case "/login":
		w.Header().Add("Set-Cookie", "who="+who+"; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "n=0; Path=/")
	case "/step":
		if got, want := r.Header.Get("Cookie"), "who="+who+"; n="+q.Get("want"); got != want {
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, "browser %s: the backend got %q, want %q", who, got, want)
			return
		}
		w.Header().Add("Set-Cookie", "n="+q.Get("next")+"; Path=/")
	}
}

// browse is browser i: it logs in, then steps until the load stops.
func (l *stepLoad) browse(i int) {
	client := envoytest.NewBrowser(l.f)
	loggedIn, step := false, 0
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		u := fmt.Sprintf("https://app.test/login?b=%d", i)
		if loggedIn {
			u = fmt.Sprintf("https://app.test/step?b=%d&want=%d&next=%d", i, step, step+1)
		}
		resp, err := client.Get(u)
		if err != nil {
			l.fail("transport error: " + err.Error())
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			l.ok.Add(1)
			if loggedIn {
				step++
				l.steps[i].Store(int64(step))
			}
			loggedIn = true
		case http.StatusConflict:
			l.lost.Add(1)
			l.mu.Lock()
			l.lostLog = append(l.lostLog, string(body))
			l.mu.Unlock()
			return // out of step for good
		default:
			l.fail(fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("x-envoy-response-code-details")))
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *stepLoad) fail(what string) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures[what]++
}

// halt stops the browsers and waits for them.
func (l *stepLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitSteps waits until every browser has made n more successful steps.
func (l *stepLoad) waitSteps(t *testing.T, n int64) {
	t.Helper()
	base := make([]int64, len(l.steps))
	for i := range l.steps {
		base[i] = l.steps[i].Load()
	}
	deadline := time.Now().Add(20 * time.Second)
	for i := range l.steps {
		for l.steps[i].Load() < base[i]+n {
			if time.Now().After(deadline) || l.lost.Load() > 0 {
				t.Fatalf("browser %d stuck at step %d (ok %d, failed %d %v, lost %d %q)",
					i, l.steps[i].Load(), l.ok.Load(), l.failed.Load(), l.failureCounts(), l.lost.Load(), l.lostLog)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func (l *stepLoad) failureCounts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.failures)
}

func (l *stepLoad) report(t *testing.T) {
	t.Logf("requests: %d succeeded, %d failed %v, %d lost cookies; backend calls %d",
		l.ok.Load(), l.failed.Load(), l.failureCounts(), l.lost.Load(), l.backendCalls.Load())
}

// TestRollingRestartRedis: three replicas on one Redis take traffic
// spread by a health-checking client (as Envoy's cluster), and each is
// restarted in turn: SIGTERM, which turns its health NOT_SERVING and
// keeps serving for the drain delay while the client moves away, then
// stops; its replacement joins once healthy. No request fails, and no
// cookie is lost.
func TestRollingRestartRedis(t *testing.T) {
	srv := redistest.Start(t)
	args := []string{"-store", "redis", "-redis-addr", srv.Addr,
		// Generous for a loaded CI machine under -race: this test is
		// about restarts, not Redis latency.
		"-redis-timeout", "1s",
		"-drain-delay", "300ms", "-shutdown-grace", "5s", "-log-level", "info"}
	bal := &extproctest.Balancer{Interval: 20 * time.Millisecond}
	t.Cleanup(bal.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	replicas := make([]*instance, 3)
	for i := range replicas {
		replicas[i] = start(t, args...)
		if err := bal.Add(replicas[i].grpcAddr); err != nil {
			t.Fatal(err)
		}
		if err := bal.WaitHealthy(ctx, replicas[i].grpcAddr); err != nil {
			t.Fatal(err)
		}
	}
	load := newStepLoad(t, bal, 12)
	load.waitSteps(t, 10)
	for i, old := range replicas {
		if err := old.stop(); err != nil {
			t.Fatalf("replica %d: run = %v", i, err)
		}
		bal.Remove(old.grpcAddr)
		replicas[i] = start(t, args...)
		if err := bal.Add(replicas[i].grpcAddr); err != nil {
			t.Fatal(err)
		}
		if err := bal.WaitHealthy(ctx, replicas[i].grpcAddr); err != nil {
			t.Fatal(err)
		}
		load.waitSteps(t, 5)
	}
	load.halt()
	load.report(t)
	if load.failed.Load() != 0 || load.lost.Load() != 0 {
		t.Errorf("%d requests failed (%v), %d lost cookies (%q)", load.failed.Load(), load.failureCounts(), load.lost.Load(), load.lostLog)
	}
	for addr, n := range bal.Streams() {
		if n == 0 {
			t.Errorf("replacement %s got no streams", addr)
		}
	}
}

// TestRestartStateFile: one replica on the memory store with -state-file
// is restarted under load. The sessions survive: every browser goes on
// stepping with all its cookies. While no replica runs, requests fail
// closed: Envoy answers 500 without reaching the backend (the browser
// sees an error page, not a logged-out app); none is sent on without
// its cookies.
func TestRestartStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	args := []string{"-state-file", path, "-drain-delay", "300ms", "-shutdown-grace", "5s", "-log-level", "info"}
	bal := &extproctest.Balancer{Interval: 20 * time.Millisecond}
	t.Cleanup(bal.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := start(t, args...)
	if err := bal.Add(a.grpcAddr); err != nil {
		t.Fatal(err)
	}
	if err := bal.WaitHealthy(ctx, a.grpcAddr); err != nil {
		t.Fatal(err)
	}
	const browsers = 12
	load := newStepLoad(t, bal, browsers)
	load.waitSteps(t, 10)

	if err := a.stop(); err != nil {
		t.Fatalf("run = %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file after shutdown: %v, %v", fi, err)
	}
	time.Sleep(100 * time.Millisecond) // the restart takes a while
	b := start(t, args...)
	bal.Remove(a.grpcAddr)
	if err := bal.Add(b.grpcAddr); err != nil {
		t.Fatal(err)
	}
	if err := bal.WaitHealthy(ctx, b.grpcAddr); err != nil {
		t.Fatal(err)
	}
	load.waitSteps(t, 10)
	load.halt()
	load.report(t)
	if !strings.Contains(b.logs.String(), fmt.Sprintf("sessions=%d", browsers)) {
		t.Errorf("the new replica did not load the %d sessions:\n%s", browsers, b.logs)
	}
	if load.lost.Load() != 0 {
		t.Errorf("%d lost cookies: %q", load.lost.Load(), load.lostLog)
	}
	if load.failed.Load() == 0 {
		t.Error("no request failed while no replica ran")
	}
	for what := range load.failureCounts() {
		if !strings.HasPrefix(what, "500 ext_proc_error_gRPC_error") {
			t.Errorf("a request failed otherwise than with Envoy's 500: %q", what)
		}
	}
	// Fail closed: no failed request reached the backend.
	if calls, served := load.backendCalls.Load(), load.ok.Load(); calls != served {
		t.Errorf("the backend got %d requests, the browsers %d answers: failed requests reached it", calls, served)
	}
	t.Logf("streams per replica: %v", slices.Collect(maps.Values(bal.Streams())))
}
