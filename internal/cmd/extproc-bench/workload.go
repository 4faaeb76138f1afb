package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// load runs the workers for d and returns every request's latency. With
// a rate, requests are paced and each latency counts from the moment its
// request was due, so that a slow server's queueing is not hidden.
func (b *bench) load(clients []extprocv3.ExternalProcessorClient, w *workload, d time.Duration) []time.Duration {
	start := time.Now()
	deadline := start.Add(d)
	var due chan time.Time
	if b.rate > 0 {
		due = make(chan time.Time, b.rate)
		go func() {
			defer close(due)
			interval := time.Second / time.Duration(b.rate)
			for n := 0; ; n++ {
				at := start.Add(time.Duration(n) * interval)
				if at.After(deadline) {
					return
				}
				time.Sleep(time.Until(at))
				due <- at
			}
		}()
	}
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for worker := range b.concurrency {
		wg.Go(func() {
			client := clients[worker%len(clients)]
			var lat []time.Duration
			for i := worker; ; i += b.concurrency {
				begin := time.Now()
				if due != nil {
					at, ok := <-due
					if !ok {
						break
					}
					begin = at
				} else if begin.After(deadline) {
					break
				}
				if err := w.exchange(client, i); err != nil {
					fmt.Fprintln(os.Stderr, "request failed:", err)
					return
				}
				lat = append(lat, time.Since(begin))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all
}

// workload holds the messages Envoy would send: realistic browser request
// headers (16 with the pseudo-headers) carrying a session cookie and one
// browser cookie, and realistic response headers (8, plus a Set-Cookie on
// every 4th response).
type workload struct {
	requests              []*extprocv3.ProcessingRequest
	response, withCookies *extprocv3.ProcessingRequest
}

func responseMsg(setCookie bool) *extprocv3.ProcessingRequest {
	kv := []string{":status", "200", "content-type", "text/html; charset=utf-8", "content-length", "18234",
		"cache-control", "no-cache", "date", "Wed, 25 Nov 2026 12:00:00 GMT", "etag", `W/"4a3b-18c2f"`,
		"vary", "Accept-Encoding", "x-envoy-upstream-service-time", "12"}
	if setCookie {
		kv = append(kv, "set-cookie", "prefs=0123456789abcdef0123456789abcdef012; Path=/; Max-Age=31536000; SameSite=Lax")
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoytest.HeaderMap(kv...)}},
		MetadataContext: &corev3.Metadata{},
	}
}

// newWorkload logs in n sessions, each with three 35-byte backend
// cookies, and prepares a request message for each. With forwardRules,
// every message carries only the headers proxysession reads, as Envoy's
// forward_rules send them.
func newWorkload(client extprocv3.ExternalProcessorClient, n int, forwardRules bool) (*workload, error) {
	w := &workload{response: responseMsg(false), withCookies: responseMsg(true)}
	if forwardRules {
		defer w.forwardOnly(processor.ForwardedHeaders())
	}
	login := responseMsg(false)
	hm := login.GetResponseHeaders().Headers
	for _, c := range []string{"sid", "user", "prefs"} {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "set-cookie", RawValue: []byte(c + "=" + rand.Text()[:26] + "012345678; Path=/; HttpOnly; Secure")})
	}
	for range n {
		value := rand.Text() + rand.Text()[:17] // the noop server never issues one
		resps, err := roundTrip(client, envoytest.RealisticRequest("theme=dark"), login)
		if err != nil {
			return nil, err
		}
		for _, o := range resps[1].GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
			if v, ok := strings.CutPrefix(string(o.GetHeader().GetRawValue()), sessions.DefaultCookieName+"="); ok {
				value, _, _ = strings.Cut(v, ";")
			}
		}
		w.requests = append(w.requests, envoytest.RealisticRequest(sessions.DefaultCookieName+"="+value+"; theme=dark"))
	}
	return w, nil
}

// forwardOnly drops from every prepared message the headers not in keep.
func (w *workload) forwardOnly(keep []string) {
	for _, m := range append([]*extprocv3.ProcessingRequest{w.response, w.withCookies}, w.requests...) {
		hm := m.GetRequestHeaders().GetHeaders()
		if hm == nil {
			hm = m.GetResponseHeaders().GetHeaders()
		}
		hm.Headers = slices.DeleteFunc(hm.Headers, func(h *corev3.HeaderValue) bool { return !slices.Contains(keep, h.GetKey()) })
	}
}

// exchange is one HTTP request as Envoy sees it: a new stream, request
// headers, response headers, half-close and reset.
func (w *workload) exchange(client extprocv3.ExternalProcessorClient, i int) error {
	resp := w.response
	if i%4 == 0 {
		resp = w.withCookies
	}
	_, err := roundTrip(client, w.requests[i%len(w.requests)], resp)
	return err
}

func roundTrip(client extprocv3.ExternalProcessorClient, msgs ...*extprocv3.ProcessingRequest) ([]*extprocv3.ProcessingResponse, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // Envoy resets the stream after its half-close
	stream, err := client.Process(ctx)
	if err != nil {
		return nil, err
	}
	var out []*extprocv3.ProcessingResponse
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return nil, err
		}
		r, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, stream.CloseSend()
}
