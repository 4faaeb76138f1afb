package processor

import (
	"context"
	"log/slog"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"

	"github.com/proxysession/proxysession/processor/envoytest"
	"github.com/proxysession/proxysession/sessions"
)

// FuzzProcess feeds arbitrary pairs of ext_proc messages, as one stream,
// to the processor: it must not panic, and every reply must be valid, of
// the type Envoy expects, and written in raw_value only.
func FuzzProcess(f *testing.F) {
	seed := func(msgs ...*extprocv3.ProcessingRequest) {
		var enc [2][]byte
		for i, m := range msgs {
			b, err := proto.Marshal(m)
			if err != nil {
				f.Fatal(err)
			}
			enc[i] = b
		}
		f.Add(enc[0], enc[1])
	}
	seed(envoytest.RequestHeaders(":authority", "app.test", ":path", "/x?y", ":method", "GET", ":scheme", "https", "cookie", "a=b; "+sessions.DefaultCookieName+"=zz"),
		envoytest.ResponseHeaders(":status", "200", "set-cookie", "a=1; Secure", "set-cookie", "b=2", "cache-control", "public", "clear-site-data", `"cookies"`))
	seed(envoytest.RequestHeaders("cookie", "\xff\xfe"), &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{}}})
	seed(&extprocv3.ProcessingRequest{}, &extprocv3.ProcessingRequest{ObservabilityMode: true})
	seed(envoytest.RequestHeaders(":authority", "a", "cookie", "x=\x01\n; "+sessions.DefaultCookieName+"=q"), envoytest.ResponseHeaders("set-cookie", "p=\t\x80"))

	cache, err := sessions.New(sessions.Config{Logger: slog.New(slog.DiscardHandler), PassThrough: []string{"p"}})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(cache, Options{Logger: slog.New(slog.DiscardHandler)})
	f.Fuzz(func(t *testing.T, first, second []byte) {
		var st streamState
		for _, b := range [][]byte{first, second} {
			req := &extprocv3.ProcessingRequest{}
			if err := proto.Unmarshal(b, req); err != nil {
				continue
			}
			resp := srv.handle(context.Background(), &st, req)
			want := phaseOf(req)
			if resp == nil {
				if !req.GetObservabilityMode() && want != phaseUnknown {
					t.Fatalf("no reply to a %s message", want)
				}
				continue
			}
			if err := resp.ValidateAll(); err != nil {
				t.Fatalf("invalid reply to %s: %v", want, err)
			}
			var got phase
			var m *extprocv3.HeaderMutation
			switch r := resp.Response.(type) {
			case *extprocv3.ProcessingResponse_RequestHeaders:
				got, m = phaseRequestHeaders, r.RequestHeaders.GetResponse().GetHeaderMutation()
			case *extprocv3.ProcessingResponse_ResponseHeaders:
				got, m = phaseResponseHeaders, r.ResponseHeaders.GetResponse().GetHeaderMutation()
			case *extprocv3.ProcessingResponse_RequestBody:
				got = phaseRequestBody
			case *extprocv3.ProcessingResponse_ResponseBody:
				got = phaseResponseBody
			case *extprocv3.ProcessingResponse_RequestTrailers:
				got = phaseRequestTrailers
			case *extprocv3.ProcessingResponse_ResponseTrailers:
				got = phaseResponseTrailers
			default:
				t.Fatalf("reply %T to a %s message", resp.Response, want)
			}
			if got != want {
				t.Fatalf("reply of type %s to a %s message", got, want)
			}
			for _, o := range m.GetSetHeaders() {
				if o.GetHeader().GetValue() != "" {
					t.Fatalf("header %q written in value", o.GetHeader().GetKey())
				}
				if !validHeaderValue(o.GetHeader().GetRawValue()) {
					t.Fatalf("header %q has a value Envoy rejects: %q", o.GetHeader().GetKey(), o.GetHeader().GetRawValue())
				}
			}
		}
	})
}

// validHeaderValue is Envoy's check: no CTL but HTAB.
func validHeaderValue(v []byte) bool {
	for _, c := range v {
		if c != '\t' && (c < 0x20 || c == 0x7f) {
			return false
		}
	}
	return true
}
