package redisstore_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/sessions/redisstore"
)

func TestMain(m *testing.M) {
	// The tests kill Redis on purpose; keep the client's complaints quiet.
	redis.SetLogger(redisstore.ClientLogger{Logger: slog.New(slog.DiscardHandler)})
	os.Exit(m.Run())
}
