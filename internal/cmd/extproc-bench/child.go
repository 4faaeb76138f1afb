package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"syscall"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
)

// child serves ext_proc on loopback, prints "addr ADDR", then answers
// each "cpu" line on stdin with its CPU time so far in microseconds.
func child(kind, redisAddr, cpuProfile string) error {
	gs, closeStore, err := newChildServer(kind, redisAddr)
	if err != nil {
		return err
	}
	defer closeStore()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go gs.Serve(lis)
	fmt.Printf("addr %s\n", lis.Addr())
	in := bufio.NewScanner(os.Stdin)
	profiling := false
	for in.Scan() {
		// The first "cpu" marks the start of the measurement.
		if cpuProfile != "" && !profiling {
			f, err := os.Create(cpuProfile + "." + kind)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
			profiling = true
		}
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return err
		}
		fmt.Printf("cpu %d\n", ru.Utime.Nano()/1e3+ru.Stime.Nano()/1e3)
	}
	gs.Stop()
	return nil
}

// newChildServer returns the gRPC server of kind, built as
// cmd/proxysession builds it for the proxysession targets, and the
// function that closes its store.
func newChildServer(kind, redisAddr string) (*grpc.Server, func(), error) {
	log := slog.New(slog.DiscardHandler)
	switch kind {
	case "noop":
		gs := grpc.NewServer()
		extprocv3.RegisterExternalProcessorServer(gs, noop{})
		return gs, func() {}, nil
	case "proxysession", "proxysession-redis":
	default:
		return nil, nil, fmt.Errorf("unknown server %q", kind)
	}
	cfg := sessions.Config{Logger: log}
	closeStore := func() {}
	if kind == "proxysession-redis" {
		client := redis.NewClient(&redis.Options{Addr: redisAddr, ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
		closeStore = func() { client.Close() }
		if err := client.FlushDB(context.Background()).Err(); err != nil {
			closeStore()
			return nil, nil, fmt.Errorf("redis at %q: %w", redisAddr, err)
		}
		store, err := redisstore.New(client, redisstore.Options{Lifetime: sessions.DefaultLifetime, IdleTimeout: sessions.DefaultIdleTimeout, Logger: log})
		if err != nil {
			closeStore()
			return nil, nil, err
		}
		cfg.Store = store
	}
	cache, err := sessions.New(cfg)
	if err != nil {
		closeStore()
		return nil, nil, err
	}
	gs := grpc.NewServer(processor.ServerOptions()...)
	processor.Register(gs, processor.New(cache, processor.Options{Logger: log}))
	return gs, closeStore, nil
}

// noop is an ext_proc server that answers every message with an empty
// reply of its type: the floor any ext_proc service costs.
type noop struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (noop) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		resp := &extprocv3.ProcessingResponse{}
		switch req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}
