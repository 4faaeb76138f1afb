package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timings of the topologies: small, so that failovers are quick in tests.
const (
	// DownAfter is how long a master must be unreachable before the
	// sentinels consider it down, and a cluster node's timeout.
	DownAfter = time.Second
	// FailoverTimeout is the sentinels' failover-timeout.
	FailoverTimeout = 3 * time.Second
	// startupTimeout bounds each wait while a topology starts.
	startupTimeout = 20 * time.Second
)

// fastSync makes a replica's first sync start at once (Redis 7 waits 5s
// for more replicas to share a diskless sync), and its replication offset
// move every second: a cluster lists a replica in CLUSTER SLOTS only once
// its offset is not 0, which the master's pings to replicas (every 10s by
// default) make it. The append-only file is fsynced every second, as
// usual with replicas: six servers fsyncing every write to one test disk
// stall one another for more than the store's 100ms timeout.
var fastSync = []string{"--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1", "--appendfsync", "everysec"}

// SentinelMaster is the master name the sentinels monitor.
const SentinelMaster = "mymaster"

// Sentinel is a master with one replica, watched by three sentinels
// (quorum 2).
type Sentinel struct {
	Master, Replica *Server
	Sentinels       []*Server
	t               testing.TB
}

// StartSentinel starts a Sentinel topology on free loopback ports and
// kills it when the test ends. It returns once the replica is in sync and
// every sentinel knows the replica and the two other sentinels, so that a
// failover can start at once.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin := lookPath(t)
	s := &Sentinel{t: t}
	port := func() int {
		p, err := freePort(false)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	s.Master = startServer(t, bin, port(), "", fastSync...)
	s.Replica = startServer(t, bin, port(), "", append([]string{"--replicaof", "127.0.0.1", portOf(s.Master.Addr)}, fastSync...)...)
	for range 3 {
		p := port()
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n", p, dir) +
			fmt.Sprintf("sentinel monitor %s 127.0.0.1 %s 2\n", SentinelMaster, portOf(s.Master.Addr)) +
			fmt.Sprintf("sentinel down-after-milliseconds %s %d\n", SentinelMaster, DownAfter.Milliseconds()) +
			fmt.Sprintf("sentinel failover-timeout %s %d\n", SentinelMaster, FailoverTimeout.Milliseconds()) +
			fmt.Sprintf("sentinel parallel-syncs %s 1\n", SentinelMaster)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := &Server{
			Addr:  "127.0.0.1:" + strconv.Itoa(p),
			t:     t,
			bin:   bin,
			args:  []string{conf, "--sentinel", "--logfile", "", "--daemonize", "no"},
			ready: "+monitor master",
		}
		srv.start()
		t.Cleanup(srv.Kill)
		s.Sentinels = append(s.Sentinels, srv)
	}
	WaitReplicated(t, s.Master.Addr)
	for _, sn := range s.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr})
		waitFor(t, startupTimeout, "sentinel "+sn.Addr+" to know the replica and the other sentinels", func(ctx context.Context) (bool, string) {
			m, err := c.Master(ctx, SentinelMaster).Result()
			if err != nil {
				return false, err.Error()
			}
			return m["num-slaves"] == "1" && m["num-other-sentinels"] == "2", fmt.Sprint(m)
		})
		c.Close()
	}
	return s
}

// Addrs are the sentinels' addresses.
func (s *Sentinel) Addrs() []string {
	var addrs []string
	for _, sn := range s.Sentinels {
		addrs = append(addrs, sn.Addr)
	}
	return addrs
}

// MasterAddr asks the sentinels which server is the master.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var lastErr error
	for _, sn := range s.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond})
		addr, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
		c.Close()
		if err == nil && len(addr) == 2 {
			return addr[0] + ":" + addr[1], nil
		}
		lastErr = err
	}
	return "", fmt.Errorf("no sentinel knows the master: %v", lastErr)
}

// Cluster is a Redis Cluster of three masters with one replica each.
type Cluster struct {
	Nodes []*Server
	t     testing.TB
}

// StartCluster starts a cluster of six nodes (three masters, three
// replicas) on free loopback ports, with cluster-node-timeout DownAfter,
// and kills it when the test ends. It returns once every node reports
// the cluster ok with all slots covered and every replica is in sync.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := lookPath(t)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-cli is not installed, and CI=true (it comes with redis-server, or redis-tools)")
		}
		t.Skip("redis-cli is not installed; skipping the Redis Cluster tests")
	}
	c := &Cluster{t: t}
	args := []string{"--cluster", "create"}
	for range 6 {
		port, err := freePort(true)
		if err != nil {
			t.Fatal(err)
		}
		n := startServer(t, bin, port, "", append([]string{
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(DownAfter.Milliseconds(), 10),
			// A replica whose link to its master broke an instant ago may
			// always take over (the default refuses after a long outage).
			"--cluster-replica-validity-factor", "0"}, fastSync...)...)
		c.Nodes = append(c.Nodes, n)
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		waitFor(t, startupTimeout, "cluster node "+n.Addr+" to report the cluster ok", func(ctx context.Context) (bool, string) {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return false, err.Error()
			}
			//lint:ignore SA1019 CLUSTER SLOTS is what go-redis's cluster client reads (ClusterClient.loadState)
			slots, err := cl.ClusterSlots(ctx).Result()
			if err != nil {
				return false, err.Error()
			}
			ok := strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:6") &&
				strings.Contains(info, "cluster_slots_ok:16384") && len(slots) == 3
			for _, s := range slots {
				ok = ok && len(s.Nodes) == 2
			}
			return ok, fmt.Sprintf("%s slots %v", info, slots)
		})
		cl.Close()
	}
	for _, m := range c.Masters() {
		WaitReplicated(t, m)
	}
	return c
}

// Addrs are the addresses of the nodes, the killed ones included.
func (c *Cluster) Addrs() []string {
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.Addr)
	}
	return addrs
}

// Node returns the node at addr.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	c.t.Fatalf("no cluster node %s", addr)
	return nil
}

// Slots is the slot map as one node reports it.
type Slots []redis.ClusterSlot

// Owner returns the address of the master serving slot, or "".
func (s Slots) Owner(slot int) string {
	for _, r := range s {
		if slot >= r.Start && slot <= r.End && len(r.Nodes) > 0 {
			return r.Nodes[0].Addr
		}
	}
	return ""
}

// ReplicaOf returns the address of a replica of master, or "".
func (s Slots) ReplicaOf(master string) string {
	for _, r := range s {
		if len(r.Nodes) > 1 && r.Nodes[0].Addr == master {
			return r.Nodes[1].Addr
		}
	}
	return ""
}

// SlotsVia returns the slot map as the node at addr reports it.
func (c *Cluster) SlotsVia(ctx context.Context, addr string) (Slots, error) {
	cl := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond})
	defer cl.Close()
	//lint:ignore SA1019 CLUSTER SLOTS is what go-redis's cluster client reads (ClusterClient.loadState)
	return cl.ClusterSlots(ctx).Result()
}

// Masters returns the addresses of the masters serving slots, as the
// first node that answers reports them, sorted.
func (c *Cluster) Masters() []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		slots, err := c.SlotsVia(ctx, n.Addr)
		if err != nil {
			continue
		}
		var masters []string
		for _, r := range slots {
			if len(r.Nodes) > 0 && !slices.Contains(masters, r.Nodes[0].Addr) {
				masters = append(masters, r.Nodes[0].Addr)
			}
		}
		slices.Sort(masters)
		return masters
	}
	c.t.Fatal("no cluster node answers CLUSTER SLOTS")
	return nil
}

// nodeID returns the cluster node id of the node at addr.
func nodeID(ctx context.Context, addr string) (string, error) {
	cl := redis.NewClient(&redis.Options{Addr: addr})
	defer cl.Close()
	return cl.Do(ctx, "cluster", "myid").Text()
}

// MoveSlot migrates slot, and the keys in it, from the master at from to
// the master at to, as redis-cli --cluster reshard does: IMPORTING and
// MIGRATING, MIGRATE of the keys in batches, then the new owner is told
// to every master. Between the steps it sleeps pause, so that traffic
// meets the slot in each state (ASK while it migrates, MOVED after).
func (c *Cluster) MoveSlot(ctx context.Context, slot int, from, to string, pause time.Duration) error {
	fromID, err := nodeID(ctx, from)
	if err != nil {
		return err
	}
	toID, err := nodeID(ctx, to)
	if err != nil {
		return err
	}
	src := redis.NewClient(&redis.Options{Addr: from})
	defer src.Close()
	dst := redis.NewClient(&redis.Options{Addr: to})
	defer dst.Close()
	if err := dst.Do(ctx, "cluster", "setslot", slot, "importing", fromID).Err(); err != nil {
		return fmt.Errorf("setslot importing: %w", err)
	}
	if err := src.Do(ctx, "cluster", "setslot", slot, "migrating", toID).Err(); err != nil {
		return fmt.Errorf("setslot migrating: %w", err)
	}
	time.Sleep(pause)
	host, port := "127.0.0.1", portOf(to)
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 10).Result()
		if err != nil {
			return fmt.Errorf("getkeysinslot: %w", err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := retryClusterDown(ctx, func() error { return src.Do(ctx, args...).Err() }); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		time.Sleep(pause)
	}
	// The new owner first, then the old one, then the others (as
	// redis-cli does).
	for _, addr := range append([]string{to, from}, c.Masters()...) {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		err := cl.Do(ctx, "cluster", "setslot", slot, "node", toID).Err()
		cl.Close()
		if err != nil {
			return fmt.Errorf("setslot node on %s: %w", addr, err)
		}
	}
	return nil
}

// retryClusterDown runs op until it succeeds, fails otherwise than with
// CLUSTERDOWN or TRYAGAIN, or 10s pass: on a loaded machine, a 1s node
// timeout can let a node briefly consider the cluster down.
func retryClusterDown(ctx context.Context, op func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := op()
		if err == nil || time.Now().After(deadline) ||
			!(strings.HasPrefix(err.Error(), "CLUSTERDOWN") || strings.HasPrefix(err.Error(), "TRYAGAIN")) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var offsetRe = regexp.MustCompile(`slave\d+:.*?offset=(\d+)`)

// WaitReplicated waits until every replica of the master at addr has
// everything the master wrote so far.
func WaitReplicated(t testing.TB, addr string) {
	t.Helper()
	cl := redis.NewClient(&redis.Options{Addr: addr})
	defer cl.Close()
	waitFor(t, startupTimeout, "the replicas of "+addr+" to catch up", func(ctx context.Context) (bool, string) {
		info, err := cl.Info(ctx, "replication").Result()
		if err != nil {
			return false, err.Error()
		}
		var master string
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
				master = v
			}
		}
		offsets := offsetRe.FindAllStringSubmatch(info, -1)
		if len(offsets) == 0 || !strings.Contains(info, "state=online") {
			return false, info
		}
		for _, o := range offsets {
			if o[1] != master {
				return false, info
			}
		}
		return true, info
	})
}

// waitFor polls cond every 50ms until it holds, and fails the test with
// what it last reported after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ok, state := cond(ctx)
		cancel()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; last state:\n%s", timeout, what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func portOf(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}
