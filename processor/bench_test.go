package processor

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// BenchmarkHandle measures the processor's own work for one HTTP request,
// without gRPC: handling the request headers and the response headers
// messages of a session with three cookies, with a Set-Cookie on every
// 4th response. (internal/cmd/extproc-bench measures the whole exchange
// over gRPC against a no-op server.)
func BenchmarkHandle(b *testing.B) {
	benchHandle(b, context.Background(), Options{})
}

// benchHandle is BenchmarkHandle's loop with opts, its messages handled
// with ctx as the stream's context.
func benchHandle(b *testing.B, ctx context.Context, opts Options) {
	cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	opts.Logger = slog.New(slog.DiscardHandler)
	srv := New(cache, opts)
	const n = 1000
	reqs := make([]*extprocv3.ProcessingRequest, n)
	for i := range reqs {
		var st streamState
		srv.handle(ctx, &st, envoytest.RealisticRequest("theme=dark"))
		resp := srv.handle(ctx, &st, envoytest.ResponseHeaders(":status", "200",
			"set-cookie", fmt.Sprintf("sid=%035d; Path=/", i), "set-cookie", fmt.Sprintf("user=%035d", i), "set-cookie", fmt.Sprintf("prefs=%035d", i)))
		sc := resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()[0].GetHeader().GetRawValue()
		pair := string(sc[:len(sessions.DefaultCookieName)+1+43])
		reqs[i] = envoytest.RealisticRequest(pair + "; theme=dark")
	}
	plain := envoytest.ResponseHeaders(":status", "200", "content-type", "text/html", "content-length", "1234", "cache-control", "no-cache",
		"date", "Wed, 25 Nov 2026 12:00:00 GMT", "etag", `W/"1"`, "vary", "Accept-Encoding", "x-envoy-upstream-service-time", "3")
	withCookie := envoytest.ResponseHeaders(":status", "200", "content-type", "text/html", "set-cookie", "prefs=0123456789abcdef0123456789abcdef012; Path=/")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var st streamState
		if r := srv.handle(ctx, &st, reqs[i%n]); r.GetRequestHeaders().GetResponse().GetHeaderMutation() == nil {
			b.Fatal("no cookie mutation")
		}
		resp := plain
		if i%4 == 0 {
			resp = withCookie
		}
		srv.handle(ctx, &st, resp)
		i++
	}
}
