package processor

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// TestCodecMarshalsLikeProtobuf: the vtprotobuf marshalling of replies
// yields the bytes protobuf does, so Envoy reads the same messages.
func TestCodecMarshalsLikeProtobuf(t *testing.T) {
	replies := []*extprocv3.ProcessingResponse{
		&newHeadersReply(phaseRequestHeaders, false).resp,
		func() *extprocv3.ProcessingResponse {
			r := newHeadersReply(phaseRequestHeaders, true)
			r.mutation.SetHeaders = r.setCookieHeader("a=1; b=\xff\x80")
			return &r.resp
		}(),
		func() *extprocv3.ProcessingResponse {
			r := newHeadersReply(phaseResponseHeaders, true)
			r.mutation.RemoveHeaders = []string{"set-cookie"}
			r.mutation.SetHeaders = []*corev3.HeaderValueOption{header("set-cookie", "s=1; Secure", true), header("cache-control", "private", false)}
			return &r.resp
		}(),
		New(nil, Options{Logger: slog.New(slog.DiscardHandler)}).unavailable(t.Context(), phaseRequestHeaders, time.Now(), errors.New("test")),
	}
	c := Codec()
	for i, r := range replies {
		got, err := c.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Materialize()) != string(want) {
			t.Errorf("reply %d: codec bytes differ from protobuf's", i)
		}
		var back extprocv3.ProcessingResponse
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(got.Materialize())}, &back); err != nil || !proto.Equal(&back, r) {
			t.Errorf("reply %d does not round-trip: %v", i, err)
		}
	}
}
