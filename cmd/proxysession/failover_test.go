package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/processor/envoytest"
)

// The failover tests run real Sentinel and Cluster topologies under load
// from browsers through two proxysession instances started like the
// binary (run), kill a master or move slots, and check that every
// response is either right (the backend got exactly the session's
// cookies) or a 503 with Retry-After, that no backend cookie reaches a
// browser, that every session written before is intact afterwards, and
// how long service took to resume. The figures are logged (go test -v).

const (
	loadBrowsers = 24 // browsers under load; each is one session
	idleBrowsers = 8  // sessions written before, untouched during the failover
	loadPause    = 5 * time.Millisecond
	// maxRecovery bounds, loosely for CI, how long after the promotion
	// every session must be served again.
	maxRecovery = 30 * time.Second
)

// fleet is the browsers, the backend they reach through the instances,
// and what they saw.
type fleet struct {
	t        *testing.T
	clients  []extprocv3.ExternalProcessorClient
	browsers []*browser
	idle     []*browser

	mu          sync.Mutex
	violations  []string
	lastFailure time.Time
}

// browser is one user with one session. The backend sets "sid=<id>-<v>"
// on /login?v=<v> and echoes the Cookie header it got on /page.
type browser struct {
	id      int
	client  *http.Client
	filter  *envoytest.Filter
	version int
	// confirmed is the last version whose login the browser saw succeed
	// (or that a page showed); pending are later logins that failed
	// with 503: the store may hold them or not.
	confirmed int
	pending   []int
	events    []event
	// lost counts pages that showed a version older than confirmed: an
	// acknowledged write the failover lost.
	lost int
}

type event struct {
	at     time.Time
	took   time.Duration
	login  bool
	ok     bool // right answer; else a 503 with Retry-After
	status int
}

func newFleet(t *testing.T, instances ...*instance) *fleet {
	fl := &fleet{t: t}
	for _, inst := range instances {
		fl.clients = append(fl.clients, extprocv3.NewExternalProcessorClient(dial(t, inst.grpcAddr, nil)))
	}
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Browser")
		switch r.URL.Path {
		case "/login":
			w.Header().Add("Set-Cookie", "sid="+id+"-"+r.URL.Query().Get("v")+"; Path=/; HttpOnly")
		case "/page":
			if !strings.HasPrefix(r.Header.Get("Cookie"), "sid="+id+"-") {
				fl.violate("browser %s: the backend got a request without the session's cookies: Cookie %q", id, r.Header.Get("Cookie"))
			}
			io.WriteString(w, r.Header.Get("Cookie"))
		}
	})
	for i := range loadBrowsers + idleBrowsers {
		f := &envoytest.Filter{Client: fl.clients[i%len(fl.clients)], Backend: backend, MessageTimeout: 2 * time.Second}
		b := &browser{id: i, client: envoytest.NewBrowser(f), filter: f}
		if i < loadBrowsers {
			fl.browsers = append(fl.browsers, b)
		} else {
			fl.idle = append(fl.idle, b)
		}
	}
	return fl
}

func (fl *fleet) violate(format string, args ...any) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if len(fl.violations) < 50 {
		fl.violations = append(fl.violations, fmt.Sprintf(format, args...))
	}
}

func (fl *fleet) checkViolations() {
	fl.t.Helper()
	fl.mu.Lock()
	defer fl.mu.Unlock()
	for _, v := range fl.violations {
		fl.t.Error(v)
	}
	fl.violations = nil
}

var appURL, _ = url.Parse("https://app.test/")

// do sends one request of b, through the next instance, and checks the
// answer: right, or a 503 with Retry-After, and never a backend cookie.
func (fl *fleet) do(b *browser, login bool) event {
	b.filter.Client = fl.clients[(b.id+len(b.events))%len(fl.clients)]
	path := "/page"
	if login {
		b.version++
		path = "/login?v=" + strconv.Itoa(b.version)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://app.test"+path, nil)
	req.Header.Set("X-Browser", strconv.Itoa(b.id))
	t0 := time.Now()
	resp, err := b.client.Do(req)
	ev := event{at: time.Now(), took: time.Since(t0), login: login}
	if err != nil {
		fl.violate("browser %d %s: %v", b.id, path, err)
		return ev
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ev.status = resp.StatusCode
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(sc, "sid=") {
			fl.violate("browser %d %s: a backend cookie reached the browser: %s (status %d)", b.id, path, sc, resp.StatusCode)
		}
	}
	for _, c := range b.client.Jar.Cookies(appURL) {
		if c.Name == "sid" {
			fl.violate("browser %d: the jar holds the backend's cookie", b.id)
		}
	}
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
		fl.mu.Lock()
		fl.lastFailure = ev.at
		fl.mu.Unlock()
		if resp.Header.Get("Retry-After") == "" {
			fl.violate("browser %d %s: 503 without Retry-After", b.id, path)
		}
		if login {
			b.pending = append(b.pending, b.version)
		}
	case resp.StatusCode != http.StatusOK:
		fl.violate("browser %d %s: status %d %s", b.id, path, resp.StatusCode, resp.Header.Get("x-envoy-response-code-details"))
	case login:
		ev.ok = true
		b.confirmed, b.pending = b.version, nil
	default:
		v, err := strconv.Atoi(strings.TrimPrefix(string(body), "sid="+strconv.Itoa(b.id)+"-"))
		switch {
		case err != nil:
			fl.violate("browser %d: the backend saw %q", b.id, body)
		case v == b.confirmed:
			ev.ok = true
		case slices.Contains(b.pending, v):
			ev.ok = true
			b.confirmed, b.pending = v, nil
		case v < b.confirmed && v >= 1:
			// Right session, older cookie: an acknowledged write lost
			// with the master (asynchronous replication).
			ev.ok = true
			b.lost++
			b.confirmed, b.pending = v, nil
		default:
			fl.violate("browser %d: the backend saw version %d, want %d or one of %v", b.id, v, b.confirmed, b.pending)
		}
	}
	return ev
}

// loginAll logs every browser in (retrying while the store warms up).
func (fl *fleet) loginAll() {
	fl.t.Helper()
	for _, b := range append(slices.Clone(fl.browsers), fl.idle...) {
		deadline := time.Now().Add(10 * time.Second)
		for fl.do(b, true); b.confirmed == 0; fl.do(b, true) {
			if time.Now().After(deadline) {
				fl.t.Fatalf("browser %d cannot log in", b.id)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.events = nil
	}
	fl.checkViolations()
}

// phase is one disruption under load.
type phase struct {
	name     string
	start    time.Time // load start
	disrupt  time.Time // kill, or migration start
	promoted time.Time // the topology reports the new master (zero if none)
	end      time.Time
}

// load runs the browsers until stop returns true or max has passed,
// then waits for them. disrupt runs 500ms into the load, in the caller's
// goroutine, and returns when the disruption is over (for a kill: when
// the topology reports the promotion).
func (fl *fleet) load(name string, max time.Duration, disrupt func(p *phase)) *phase {
	fl.t.Helper()
	for _, b := range fl.browsers {
		b.events = nil
	}
	p := &phase{name: name, start: time.Now()}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, b := range fl.browsers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				b.events = append(b.events, fl.do(b, i%4 == 3))
				time.Sleep(loadPause)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	p.disrupt = time.Now()
	disrupt(p)
	// Run until every browser has been served after its last failure
	// for a second, and a second after the disruption at least.
	deadline := p.disrupt.Add(max)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if time.Since(p.disrupt) > time.Second && fl.settled(time.Second) {
			break
		}
	}
	close(done)
	wg.Wait()
	p.end = time.Now()
	return p
}

// settled reports whether the last failure of any browser is older
// than d.
func (fl *fleet) settled(d time.Duration) bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return time.Since(fl.lastFailure) > d
}

// figures summarises a phase: requests, 503s, the time from the
// disruption to the last 503, and from the disruption to the moment
// every browser had been served again after its last failure.
type figures struct {
	requests, failed, lost int
	firstFail, lastFail    time.Duration // after the disruption
	allServed              time.Duration // every session served again, after the disruption
	failedBrowsers         int
}

func (fl *fleet) figures(p *phase) figures {
	var f figures
	f.firstFail = -1
	for _, b := range fl.browsers {
		f.lost += b.lost
		var last time.Time
		for _, e := range b.events {
			f.requests++
			if !e.ok {
				f.failed++
				last = e.at
				if d := e.at.Sub(p.disrupt); f.firstFail < 0 || d < f.firstFail {
					f.firstFail = d
				}
				f.lastFail = max(f.lastFail, e.at.Sub(p.disrupt))
			}
		}
		if last.IsZero() {
			continue
		}
		f.failedBrowsers++
		served := time.Duration(-1)
		for _, e := range b.events {
			if e.ok && e.at.After(last) {
				served = e.at.Sub(p.disrupt)
				break
			}
		}
		if served < 0 { // failed as the load stopped; checkIntact asks again
			served = p.end.Sub(p.disrupt)
		}
		f.allServed = max(f.allServed, served)
	}
	return f
}

func (fl *fleet) report(p *phase) figures {
	fl.t.Helper()
	f := fl.figures(p)
	var promoted string
	if !p.promoted.IsZero() {
		promoted = fmt.Sprintf(", promotion reported %v after it, every session served again %v after the promotion",
			p.promoted.Sub(p.disrupt).Round(time.Millisecond), (f.allServed - p.promoted.Sub(p.disrupt)).Round(time.Millisecond))
	}
	window := "none"
	if f.failed > 0 {
		window = fmt.Sprintf("503s from %v to %v after the disruption, every session served again %v after it",
			f.firstFail.Round(time.Millisecond), f.lastFail.Round(time.Millisecond), f.allServed.Round(time.Millisecond))
	}
	fl.t.Logf("%s: %d requests in %v, %d answered 503 (%d of %d sessions affected): %s%s; acknowledged writes lost: %d",
		p.name, f.requests, p.end.Sub(p.start).Round(time.Millisecond), f.failed, f.failedBrowsers, len(fl.browsers),
		window, promoted, f.lost)
	fl.checkViolations()
	before, after := fl.latencies(p, true)
	pb, pa := fl.latencies(p, false)
	fl.t.Logf("%s: latency of logins (a write) p50/p99 %v/%v before, %v/%v after; of pages (a read) %v/%v before, %v/%v after",
		p.name, pct(before, 50), pct(before, 99), pct(after, 50), pct(after, 99), pct(pb, 50), pct(pb, 99), pct(pa, 50), pct(pa, 99))
	return f
}

// latencies returns the latencies of the successful logins (or pages)
// before the disruption and from a second after the promotion (or the
// disruption's end) on.
func (fl *fleet) latencies(p *phase, login bool) (before, after []time.Duration) {
	settled := p.promoted
	if settled.IsZero() {
		settled = p.disrupt
	}
	settled = settled.Add(time.Second)
	for _, b := range fl.browsers {
		for _, e := range b.events {
			switch {
			case !e.ok || e.login != login:
			case e.at.Before(p.disrupt):
				before = append(before, e.took)
			case e.at.After(settled):
				after = append(after, e.took)
			}
		}
	}
	return before, after
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[(len(d)-1)*p/100].Round(10 * time.Microsecond)
}

// checkIntact asks once more for every session, the idle ones included:
// each must be there with its cookie.
func (fl *fleet) checkIntact(name string) {
	fl.t.Helper()
	for _, b := range append(slices.Clone(fl.browsers), fl.idle...) {
		var ev event
		for range 20 { // a 503 is allowed while the store settles
			if ev = fl.do(b, false); ev.ok || ev.status != http.StatusServiceUnavailable {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !ev.ok {
			fl.t.Errorf("%s: the session of browser %d is not intact after the failover (status %d)", name, b.id, ev.status)
		}
	}
	for _, b := range fl.idle {
		if b.confirmed != 1 || b.lost != 0 {
			fl.t.Errorf("%s: idle session %d changed: version %d", name, b.id, b.confirmed)
		}
	}
	fl.checkViolations()
}

// pollUntil polls cond every 20ms until it holds or timeout passes, and
// returns when it held (zero if never).
func pollUntil(timeout time.Duration, cond func(ctx context.Context) bool) time.Time {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		ok := cond(ctx)
		cancel()
		if ok {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Time{}
}

func TestSentinelFailover(t *testing.T) {
	t.Run("async", func(t *testing.T) { testSentinelFailover(t) })
	// Each write waits for the replica: none confirmed is lost.
	t.Run("wait-replicas", func(t *testing.T) { testSentinelFailover(t, "-redis-wait-replicas", "1") })
}

func testSentinelFailover(t *testing.T, extra ...string) {
	topo := redistest.StartSentinel(t)
	args := append([]string{"-store", "redis", "-redis-addr", strings.Join(topo.Addrs(), ","), "-redis-sentinel-master", redistest.SentinelMaster}, extra...)
	fl := newFleet(t, start(t, args...), start(t, args...))
	fl.loginAll()
	redistest.WaitReplicated(t, topo.Master.Addr)

	p := fl.load("sentinel: master killed", 20*time.Second, func(p *phase) {
		old := topo.Master.Addr
		topo.Master.Kill()
		p.promoted = pollUntil(15*time.Second, func(ctx context.Context) bool {
			addr, err := topo.MasterAddr(ctx)
			return err == nil && addr != old
		})
		if p.promoted.IsZero() {
			t.Fatal("the sentinels did not promote the replica within 15s")
		}
	})
	f := fl.report(p)
	if f.allServed-p.promoted.Sub(p.disrupt) > maxRecovery {
		t.Errorf("sessions were served again %v after the promotion, want < %v", f.allServed, maxRecovery)
	}
	if len(extra) > 0 && f.lost > 0 {
		t.Errorf("with -redis-wait-replicas, %d confirmed writes were lost", f.lost)
	}
	fl.checkIntact("sentinel")
}

func TestClusterFailover(t *testing.T) {
	topo := redistest.StartCluster(t)
	args := []string{"-store", "redis", "-redis-addr", strings.Join(topo.Addrs(), ",")}
	fl := newFleet(t, start(t, args...), start(t, args...))
	fl.loginAll()
	masters := topo.Masters()
	for _, m := range masters {
		redistest.WaitReplicated(t, m)
	}

	// Each session is one key: they spread over the masters.
	ctx := context.Background()
	keysOn := map[string][]string{}
	for _, m := range masters {
		c := redis.NewClient(&redis.Options{Addr: m})
		keys, err := c.Keys(ctx, "proxysession:*").Result()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		keysOn[m] = keys
		if len(keys) == 0 {
			t.Errorf("master %s holds no session", m)
		}
	}
	t.Logf("sessions per master: %d, %d, %d", len(keysOn[masters[0]]), len(keysOn[masters[1]]), len(keysOn[masters[2]]))

	// Slots move between masters while traffic runs (ASK, then MOVED):
	// those of the sessions on the first master go to the second.
	var moved []int
	p := fl.load("cluster: slots moved", 10*time.Second, func(p *phase) {
		c := redis.NewClient(&redis.Options{Addr: masters[0]})
		defer c.Close()
		for _, k := range keysOn[masters[0]] {
			slot, err := c.ClusterKeySlot(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(moved, int(slot)) {
				moved = append(moved, int(slot))
			}
		}
		for _, slot := range moved {
			if err := topo.MoveSlot(ctx, slot, masters[0], masters[1], 20*time.Millisecond); err != nil {
				t.Fatalf("moving slot %d: %v", slot, err)
			}
		}
	})
	fl.report(p)
	t.Logf("moved %d slots holding %d sessions in %v", len(moved), len(keysOn[masters[0]]), time.Since(p.disrupt))
	fl.checkIntact("cluster migration")

	// A master dies: its replica takes over.
	victim := masters[1]
	slots, err := topo.SlotsVia(ctx, masters[2])
	if err != nil {
		t.Fatal(err)
	}
	replica := slots.ReplicaOf(victim)
	var victimSlot int
	for _, r := range slots {
		if r.Nodes[0].Addr == victim {
			victimSlot = int(r.Start)
		}
	}
	redistest.WaitReplicated(t, victim)
	p = fl.load("cluster: master killed", 75*time.Second, func(p *phase) {
		topo.Node(victim).Kill()
		p.promoted = pollUntil(15*time.Second, func(ctx context.Context) bool {
			s, err := topo.SlotsVia(ctx, masters[2])
			return err == nil && s.Owner(victimSlot) == replica
		})
		if p.promoted.IsZero() {
			t.Fatal("the cluster did not promote the replica within 15s")
		}
	})
	f := fl.report(p)
	if d := f.allServed - p.promoted.Sub(p.disrupt); d > maxRecovery {
		t.Errorf("sessions were served again %v after the promotion, want < %v", d, maxRecovery)
	}
	fl.checkIntact("cluster kill")
}
