// Command proxysession serves Envoy's external processing (ext_proc) API:
// it keeps the cookies that backends set in server-side sessions and
// gives each browser a single session cookie instead.
//
// Run it with no flags for the in-memory store and secure defaults;
// `proxysession -help` lists every flag and environment variable.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, hooks{}); err != nil {
		fmt.Fprintf(os.Stderr, "proxysession: %v\n", err)
		if _, ok := errors.AsType[*usageError](err); ok {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
