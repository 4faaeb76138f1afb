// Package extproctest runs proxysession's ext_proc server for tests, as
// net/http/httptest runs an HTTP server: on a loopback port, built the
// way cmd/proxysession builds it (processor.ServerOptions, so the
// processor's codec, and processor.Register, so the health service),
// with a client connected to it.
//
// It is for tests only: it imports package testing, which no binary may
// link. Binaries build their server with processor.ServerOptions and
// processor.Register.
package extproctest

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/processor/envoytest"
)

// Server is a running ext_proc server and a client connection to it.
type Server struct {
	// Addr is the server's host:port on loopback.
	Addr string
	// Conn is a plaintext client connection to Addr; Client and any
	// other client (such as a health client) can share it.
	Conn   *grpc.ClientConn
	Client extprocv3.ExternalProcessorClient
	// Health is the server's health service.
	Health *health.Server

	grpc *grpc.Server
}

// NewServer starts an ext_proc server that runs every exchange through
// engine. The caller must Close it. Like httptest.NewServer, it panics
// if it cannot listen.
func NewServer(engine processor.Engine, opts processor.Options) *Server {
	gs := grpc.NewServer(processor.ServerOptions()...)
	hs := processor.Register(gs, processor.New(engine, opts))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("extproctest: failed to listen on a port: %v", err))
	}
	go gs.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		gs.Stop()
		panic(fmt.Sprintf("extproctest: failed to create a client: %v", err))
	}
	return &Server{
		Addr:   lis.Addr().String(),
		Conn:   conn,
		Client: extprocv3.NewExternalProcessorClient(conn),
		Health: hs,
		grpc:   gs,
	}
}

// Close closes the client connection and stops the server at once,
// closing the streams in flight.
func (s *Server) Close() {
	s.Conn.Close()
	s.grpc.Stop()
}

// Filter returns an Envoy stand-in that sends its requests through s to
// backend. Its message timeout is 5s instead of Envoy's 200ms, so that a
// slow test machine (or -race) does not turn a reply into a 504.
func (s *Server) Filter(backend http.Handler) *envoytest.Filter {
	return &envoytest.Filter{Client: s.Client, Backend: backend, MessageTimeout: 5 * time.Second}
}

// Send sends one message on a stream and returns the reply, failing the
// test if either fails or the reply does not pass its ValidateAll.
func Send(t testing.TB, stream extprocv3.ExternalProcessor_ProcessClient, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	t.Helper()
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.ValidateAll(); err != nil {
		t.Fatalf("invalid reply: %v", err)
	}
	return resp
}
