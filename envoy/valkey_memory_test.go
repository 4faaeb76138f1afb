package envoy_test

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	appsv1 "k8s.io/api/apps/v1"
)

// TestValkeyMemoryIsBounded: the shipped Valkey configurations cap
// Valkey's memory well below its container's limit, with a volatile-*
// eviction policy: when Valkey is full it evicts keys with a TTL (every
// session key has one) instead of being killed or refusing writes.
func TestValkeyMemoryIsBounded(t *testing.T) {
	ms, err := render(t, matrix()["none/redis/tls=false"])
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, m := range ms {
		if m.kind != "apps/v1/StatefulSet" {
			continue
		}
		var sts appsv1.StatefulSet
		strict(t, m, &sts)
		c := sts.Spec.Template.Spec.Containers[0]
		checkMaxmemory(t, "the chart's Valkey", c.Args, c.Resources.Limits.Memory().Value())
		found = true
	}
	if !found {
		t.Error("the chart's redis mode bundles no Valkey")
	}

	root, _ := filepath.Abs("..")
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, cli.WithWorkingDirectory(root),
		cli.WithEnv(nil), cli.WithProfiles([]string{"redis"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	redisSvc, ok := p.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	checkMaxmemory(t, "docker-compose.yml", redisSvc.Command, int64(redisSvc.MemLimit))
}

// checkMaxmemory checks a valkey-server command line against the memory
// limit of its container.
func checkMaxmemory(t *testing.T, where string, args []string, limit int64) {
	t.Helper()
	value := func(flag string) string {
		if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
			return args[i+1]
		}
		return ""
	}
	maxmemory, err := redisBytes(value("--maxmemory"))
	if err != nil || maxmemory <= 0 {
		t.Errorf("%s: Valkey runs without --maxmemory (%q): full, it would be killed or refuse every write", where, value("--maxmemory"))
	}
	if limit <= 0 || maxmemory > limit*3/4 {
		t.Errorf("%s: --maxmemory %d bytes with a container limit of %d: leave room for buffers and fragmentation", where, maxmemory, limit)
	}
	if policy := value("--maxmemory-policy"); !strings.HasPrefix(policy, "volatile-") {
		t.Errorf("%s: --maxmemory-policy %q: want a volatile-* policy, which evicts only keys with a TTL (sessions)", where, policy)
	}
}

// redisBytes parses a memory size as redis.conf writes it ("512mb").
func redisBytes(s string) (int64, error) {
	s = strings.ToLower(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"g", 1e9}, {"m", 1e6}, {"k", 1e3}, {"b", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}
