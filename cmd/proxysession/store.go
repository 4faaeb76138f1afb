package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

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
		WaitReplicas: cfg.Redis.WaitReplicas,
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
	if o.MasterName == "" && (len(o.Addrs) > 1 || o.IsClusterMode) {
		return newClusterClient(o.Cluster()), nil
	}
	return redis.NewUniversalClient(o), nil
}

// clusterReloadInterval bounds how stale the cluster client's slot map
// gets without errors to tell it (go-redis's default is 60s).
const clusterReloadInterval = 10 * time.Second

// newClusterClient returns a Redis Cluster client that refreshes its
// slot map as soon as a command fails for any reason but a reply that
// is about the command itself.
//
// go-redis (osscluster.go) reloads the slot map on MOVED, ASK and
// READONLY replies (ClusterClient.process) and when the map is older than
// ClusterStateReloadInterval (clusterStateHolder.Get), but not on a
// connection error or a timeout: the commands of the slots of a dead
// master go on to the dead node (clusterState.slotMasterNode returns the
// slot's first node whether it is failing or not), until the periodic
// reload, 60s later by default, although the cluster promoted its replica
// a second or two after it noticed. The hook asks for a reload
// (ReloadState, which coalesces concurrent requests and runs at most
// every 200ms) when a command fails that way, so that service for those
// sessions resumes as soon as the cluster reports the promotion.
func newClusterClient(o *redis.ClusterOptions) *redis.ClusterClient {
	o.ClusterStateReloadInterval = clusterReloadInterval
	c := redis.NewClusterClient(o)
	c.AddHook(reloadOnFailure{c})
	return c
}

// reloadOnFailure is the hook of newClusterClient.
type reloadOnFailure struct{ c *redis.ClusterClient }

func (reloadOnFailure) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnFailure) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if slotMapMayBeStale(err) {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadOnFailure) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if slotMapMayBeStale(cmd.Err()) {
				err = cmd.Err()
				break
			}
		}
		if slotMapMayBeStale(err) {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

// slotMapMayBeStale reports whether err may come from a node that no
// longer serves the slot: a connection error or a timeout (the node is
// dead or cut off), or a reply saying the cluster is down, or the slot
// elsewhere or in the middle of a change. Replies about the command
// itself (NOSCRIPT, which the script runner handles, a wrong type, ...)
// and redis.Nil do not.
func slotMapMayBeStale(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	if rerr, ok := errors.AsType[redis.Error](err); ok {
		for _, prefix := range []string{"CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "READONLY", "MASTERDOWN", "LOADING"} {
			if strings.HasPrefix(rerr.Error(), prefix) {
				return true
			}
		}
		return false
	}
	return true
}
