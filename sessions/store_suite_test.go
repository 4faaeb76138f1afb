package sessions_test

import (
	"testing"

	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/storetest"
)

// TestMemoryStoreConformance runs the Store conformance suite against the
// MemoryStore, sized as the Cache's default store would be.
func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, cfg sessions.Config) sessions.Store {
		m, err := sessions.NewMemoryStoreLimits(cfg.MaxSessions, cfg.MaxMemory)
		if err != nil {
			t.Fatal(err)
		}
		return m
	})
}
