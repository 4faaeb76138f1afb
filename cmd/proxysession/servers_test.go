package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
)

// fakeServer serves until stopped, or fails at once with err.
type fakeServer struct {
	name    string
	err     error
	stopped chan struct{}
	events  *events
}

type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (f *fakeServer) serve() error {
	if f.err != nil {
		return f.err
	}
	<-f.stopped
	return nil
}

func (f *fakeServer) stop() {
	f.events.add("stop " + f.name)
	close(f.stopped)
}

// TestRunServers: the first failure, or ctx, ends every server: drain
// first, then each server's stop, in order.
func TestRunServers(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tt := range []struct {
		name       string
		failing    error
		wantDrain  string
		wantResult error
	}{
		{"context done", nil, "drain ok", nil},
		{"a server fails", errBoom, "drain failed", errBoom},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := &events{}
			a := &fakeServer{name: "a", stopped: make(chan struct{}), events: ev}
			b := &fakeServer{name: "b", err: tt.failing, stopped: make(chan struct{}), events: ev}
			ctx, cancel := context.WithCancel(context.Background())
			if tt.failing == nil {
				cancel()
			} else {
				defer cancel()
			}
			err := runServers(ctx, func(failed bool) {
				if failed {
					ev.add("drain failed")
				} else {
					ev.add("drain ok")
				}
			}, a, b)
			if !errors.Is(err, tt.wantResult) {
				t.Errorf("runServers = %v, want %v", err, tt.wantResult)
			}
			if want := []string{tt.wantDrain, "stop a", "stop b"}; !slices.Equal(ev.list, want) {
				t.Errorf("events %q, want %q", ev.list, want)
			}
		})
	}
}
