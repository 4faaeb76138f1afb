// Command demo-backend serves the proxysession demo application (see
// package internal/demo): log in, and see which cookies the backend
// receives and which the browser holds.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/proxysession/proxysession/internal/demo"
	"github.com/proxysession/proxysession/sessions"
)

func main() {
	addr := flag.String("addr", envOr("DEMO_ADDR", ":8081"), "listen address [$DEMO_ADDR]")
	proxyCookie := flag.String("proxy-cookie", envOr("DEMO_PROXY_COOKIE", sessions.DefaultCookieName), "proxysession's session cookie name, shown on the page [$DEMO_PROXY_COOKIE]")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv := &http.Server{Addr: *addr, Handler: demo.New(*proxyCookie), ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info("demo backend listening", "addr", *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Error("serving", "error", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}
