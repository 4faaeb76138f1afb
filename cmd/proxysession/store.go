package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
)

// newStore returns the configured session store, or nil for the engine's
// default memory store, and a function that releases it.
//
// An unreachable Redis is not fatal: proxysession starts, reports not
// ready, answers the requests that need the store with 503, and recovers
// by itself when Redis answers.
func newStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (sessions.Store, func(), error) {
	if cfg.Store != "redis" {
		return nil, func() {}, nil
	}
	sc, err := cfg.Sessions.WithDefaults()
	if err != nil {
		return nil, nil, err
	}
	client, err := newRedisClient(cfg.Redis)
	if err != nil {
		return nil, nil, err
	}
	redis.SetLogger(redisstore.ClientLogger{Logger: log})
	store, err := redisstore.New(client, redisstore.Options{
		Lifetime: sc.Lifetime, IdleTimeout: sc.IdleTimeout,
		MaxCookies: sc.MaxCookiesPerSession, MaxBytes: sc.MaxBytesPerSession,
		KeyPrefix: cfg.Redis.KeyPrefix, Timeout: cfg.Redis.Timeout, Logger: log,
	})
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	if err := store.Ping(ctx); err != nil {
		log.Error("the Redis session store does not answer: requests of sessions get 503 and /readyz fails until it does",
			slog.String("error", err.Error()))
	}
	return store, func() { client.Close() }, nil
}

// newRedisClient builds a client for one server, Sentinel or a cluster
// (go-redis's UniversalClient decides from the options).
func newRedisClient(r config.Redis) (redis.UniversalClient, error) {
	o := &redis.UniversalOptions{
		Addrs:      r.Addrs,
		Username:   r.Username,
		Password:   r.Password,
		DB:         r.DB,
		MasterName: r.SentinelMaster,
		ClientName: "proxysession",
		// Each operation is bounded by the store's timeout. One retry
		// replaces a pooled connection that died with a Redis restart.
		MaxRetries:            1,
		DialTimeout:           4 * r.Timeout,
		ReadTimeout:           r.Timeout,
		WriteTimeout:          r.Timeout,
		PoolTimeout:           r.Timeout,
		ContextTimeoutEnabled: true,
		IsClusterMode:         r.Cluster,
	}
	if r.URL != "" {
		u, err := redis.ParseURL(r.URL)
		if err != nil {
			return nil, fmt.Errorf("-redis-url: %w", err)
		}
		o.Addrs, o.DB, o.TLSConfig = []string{u.Addr}, u.DB, u.TLSConfig
		if o.Username == "" {
			o.Username = u.Username
		}
		if o.Password == "" {
			o.Password = u.Password
		}
	}
	if r.TLS || o.TLSConfig != nil {
		if o.TLSConfig == nil {
			o.TLSConfig = &tls.Config{}
		}
		o.TLSConfig.MinVersion = tls.VersionTLS12
		if o.TLSConfig.ServerName == "" && len(o.Addrs) > 0 {
			o.TLSConfig.ServerName, _, _ = net.SplitHostPort(o.Addrs[0])
		}
		if r.TLSCA != "" {
			pool, err := loadCertPool(r.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("-redis-tls-ca: %w", err)
			}
			o.TLSConfig.RootCAs = pool
		}
	}
	return redis.NewUniversalClient(o), nil
}
