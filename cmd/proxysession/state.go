package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/sessions"
)

// stateKeeper keeps the memory store's sessions in -state-file: loaded
// at start, before the listeners open (so before the instance can report
// ready), written every -state-interval and once more on shutdown, after
// the servers stopped, so that no exchange is lost. A nil *stateKeeper
// (no -state-file) does nothing.
type stateKeeper struct {
	store    *sessions.MemoryStore
	path     string
	opt      sessions.StateOptions
	interval time.Duration
	log      *slog.Logger

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}

	writesOK, writesFailed atomic.Uint64
	lastWrite              atomic.Int64 // Unix seconds of the last successful write
}

// loadState loads the state file into cache's memory store and starts
// the periodic writes. A file that cannot be loaded (corrupt, truncated,
// of another version, not private) is logged and the instance starts
// with no sessions; the next write replaces it. A directory where the
// file cannot be written is a configuration error.
func loadState(cfg *config.Config, cache *sessions.Cache, log *slog.Logger) (*stateKeeper, error) {
	if cfg.StateFile == "" {
		return nil, nil
	}
	store, ok := cache.Store().(*sessions.MemoryStore)
	if !ok {
		return nil, &usageError{errors.New("-state-file: only with -store memory")}
	}
	sc, err := cfg.Sessions.WithDefaults()
	if err != nil {
		return nil, &usageError{err}
	}
	k := &stateKeeper{
		store: store, path: cfg.StateFile, interval: cfg.StateInterval, log: log,
		opt:  sessions.StateOptions{Lifetime: sc.Lifetime, IdleTimeout: sc.IdleTimeout, Now: sc.Now},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	// Temporary files of writes a crash interrupted.
	if stale, err := filepath.Glob(filepath.Join(filepath.Dir(k.path), "."+filepath.Base(k.path)+".tmp*")); err == nil {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	if err := checkWritableDir(k.path); err != nil {
		return nil, &usageError{fmt.Errorf("-state-file: %w", err)}
	}
	start := time.Now()
	info, err := store.LoadStateFile(k.path, k.opt)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Info("no state file yet: starting with no sessions", slog.String("state_file", k.path))
	case err != nil:
		log.Error("state file not loaded: starting with no sessions; the next write replaces it",
			slog.String("state_file", k.path), slog.String("error", err.Error()))
	default:
		log.Info("sessions loaded from the state file", slog.String("state_file", k.path),
			slog.Int("sessions", info.Sessions), slog.Int("ended", info.Ended),
			slog.Int64("bytes", info.Bytes), slog.Duration("took", time.Since(start)))
	}
	go k.periodic()
	return k, nil
}

// checkWritableDir checks that a file can be created next to path.
func checkWritableDir(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".probe*")
	if err != nil {
		return fmt.Errorf("cannot write in its directory: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func (k *stateKeeper) periodic() {
	defer close(k.done)
	if k.interval <= 0 {
		<-k.stop
		return
	}
	t := time.NewTicker(k.interval)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-t.C:
			k.save(slog.LevelDebug)
		}
	}
}

// save writes the state file, logging the outcome at level (errors at
// error level).
func (k *stateKeeper) save(level slog.Level) error {
	start := time.Now()
	info, err := k.store.SaveStateFile(k.path, k.opt)
	if err != nil {
		k.writesFailed.Add(1)
		k.log.Error("writing the state file failed", slog.String("state_file", k.path), slog.String("error", err.Error()))
		return err
	}
	k.writesOK.Add(1)
	k.lastWrite.Store(time.Now().Unix())
	k.log.Log(context.Background(), level, "state file written", slog.String("state_file", k.path),
		slog.Int("sessions", info.Sessions), slog.Int64("bytes", info.Bytes), slog.Duration("took", time.Since(start)))
	return nil
}

// halt stops the periodic writes and waits for one in progress.
func (k *stateKeeper) halt() {
	if k == nil {
		return
	}
	k.stopOnce.Do(func() { close(k.stop) })
	<-k.done
}

// close stops the periodic writes and writes the state file one last
// time: call it once the servers have stopped.
func (k *stateKeeper) close() error {
	if k == nil {
		return nil
	}
	k.halt()
	return k.save(slog.LevelInfo)
}

var (
	stateWritesDesc = prometheus.NewDesc("proxysession_state_writes_total",
		"Writes of the -state-file, by result (ok, error).", []string{"result"}, nil)
	stateLastWriteDesc = prometheus.NewDesc("proxysession_state_last_write_timestamp_seconds",
		"When the -state-file was last written successfully (Unix time); 0 before the first write.", nil, nil)
	stateSealedDesc = prometheus.NewDesc("proxysession_sessions_sealed",
		"Sessions loaded from the -state-file that no request has unsealed yet (included in proxysession_sessions_active).", nil, nil)
)

// register adds the state file's metrics to reg.
func (k *stateKeeper) register(reg *prometheus.Registry) error {
	if k == nil {
		return nil
	}
	return reg.Register(k)
}

// Describe implements prometheus.Collector.
func (k *stateKeeper) Describe(ch chan<- *prometheus.Desc) {
	ch <- stateWritesDesc
	ch <- stateLastWriteDesc
	ch <- stateSealedDesc
}

// Collect implements prometheus.Collector.
func (k *stateKeeper) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(stateWritesDesc, prometheus.CounterValue, float64(k.writesOK.Load()), "ok")
	ch <- prometheus.MustNewConstMetric(stateWritesDesc, prometheus.CounterValue, float64(k.writesFailed.Load()), "error")
	ch <- prometheus.MustNewConstMetric(stateLastWriteDesc, prometheus.GaugeValue, float64(k.lastWrite.Load()))
	ch <- prometheus.MustNewConstMetric(stateSealedDesc, prometheus.GaugeValue, float64(k.store.Dormant()))
}
