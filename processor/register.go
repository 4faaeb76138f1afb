package processor

import (
	"slices"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServerOptions returns opts followed by the options a gRPC server needs
// to serve a Server: the codec of Codec. Pass them to grpc.NewServer
// before Register.
func ServerOptions(opts ...grpc.ServerOption) []grpc.ServerOption {
	return append(slices.Clip(opts), grpc.ForceServerCodecV2(Codec()))
}

// Register registers srv on s as the ext_proc service (ServiceName), and
// a gRPC health service that reports the whole server ("") and
// ServiceName as SERVING. Its Shutdown, when draining, reports both
// NOT_SERVING.
func Register(s *grpc.Server, srv *Server) *health.Server {
	extprocv3.RegisterExternalProcessorServer(s, srv)
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	h.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	return h
}
