//go:build unix

package sessions

import (
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the CPU time (user and system) the process has used,
// which the other processes of a loaded machine do not inflate as they
// do wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStateFile measures the state file of 100,000 sessions of the
// benchmark workload (three cookies of 35-byte values): its size, the
// time to write it (from live sessions) and to load it, and the heap a
// loaded, still sealed session takes.
func BenchmarkStateFile(b *testing.B) {
	const n = 100_000
	c := newTestCache(b, Config{Logger: discardLogger(), MaxSessions: n, MaxMemory: 1 << 30})
	ids := benchSessions(b, c, n)
	store := c.Store().(*MemoryStore)
	path := filepath.Join(b.TempDir(), "state")
	opt := StateOptions{Lifetime: 24 * time.Hour, IdleTimeout: 2 * time.Hour}
	if _, err := store.SaveStateFile(path, opt); err != nil {
		b.Fatal(err)
	}
	b.Run("write", func(b *testing.B) {
		var info StateInfo
		cpu := cpuTime()
		for b.Loop() {
			var err error
			if info, err = store.SaveStateFile(path, opt); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e6, "cpu-ms/op")
		b.ReportMetric(float64(info.Bytes)/1e6, "file-MB")
		b.ReportMetric(float64(info.Bytes)/n, "B/session")
	})
	b.Run("load", func(b *testing.B) {
		var before, after runtime.MemStats
		var keep *MemoryStore
		cpu := cpuTime()
		for b.Loop() {
			keep = nil
			runtime.GC()
			runtime.ReadMemStats(&before)
			m, err := NewMemoryStoreLimits(n, 1<<30)
			if err != nil {
				b.Fatal(err)
			}
			if info, err := m.LoadStateFile(path, opt); err != nil || info.Sessions != n {
				b.Fatalf("%+v, %v", info, err)
			}
			keep = m
		}
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e6, "cpu-ms/op")
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/session")
		b.ReportMetric(float64(keep.Bytes())/n, "estimate-B/session")
	})
	b.Run("wake", func(b *testing.B) {
		// The first request of each session after the restart: key
		// derivation and unsealing.
		var elapsed time.Duration
		for b.Loop() {
			b.StopTimer()
			m, err := NewMemoryStoreLimits(n, 1<<30)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := m.LoadStateFile(path, opt); err != nil {
				b.Fatal(err)
			}
			now := time.Now().UnixNano()
			b.StartTimer()
			start := time.Now()
			for _, v := range ids {
				id, _ := ParseID(v)
				if m.findAt(id, now) == nil {
					b.Fatal("session not found")
				}
			}
			elapsed += time.Since(start)
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N)/n, "ns/session")
	})
}
