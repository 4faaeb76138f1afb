package redisstore_test

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/redistest"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
	"github.com/proxysession/proxysession/sessions/storetest"
)

// TestStoreConformance runs the Store conformance suite against the
// Redis store on a real redis-server, one key prefix per case.
func TestStoreConformance(t *testing.T) {
	srv := redistest.Start(t)
	var cases atomic.Int64
	storetest.Run(t, func(t *testing.T, cfg sessions.Config) sessions.Store {
		client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: time.Second, ContextTimeoutEnabled: true})
		t.Cleanup(func() { client.Close() })
		store, err := redisstore.New(client, redisstore.Options{
			Lifetime:    cfg.Lifetime,
			IdleTimeout: cfg.IdleTimeout,
			MaxCookies:  cfg.MaxCookiesPerSession,
			MaxBytes:    cfg.MaxBytesPerSession,
			KeyPrefix:   fmt.Sprintf("conformance%d:", cases.Add(1)),
			Timeout:     10 * time.Second, // the race detector is slow
			Logger:      slog.New(slog.DiscardHandler),
			Now:         cfg.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		return store
	})
}
