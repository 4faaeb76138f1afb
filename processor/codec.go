package processor

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Codec returns the gRPC codec for an ext_proc server: protobuf, with the
// replies marshalled by the vtprotobuf code go-control-plane generates
// for them, which skips reflection. Everything else (the requests, the
// health service) goes through gRPC's own protobuf codec. Install it with
// grpc.ForceServerCodecV2(processor.Codec()).
func Codec() encoding.CodecV2 {
	return vtCodec{base: encoding.GetCodecV2(proto.Name)}
}

type vtCodec struct{ base encoding.CodecV2 }

// vtMarshaler is what vtprotobuf generates (go-control-plane generates
// the marshalling half).
type vtMarshaler interface {
	MarshalVTStrict() ([]byte, error)
}

func (c vtCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(vtMarshaler); ok {
		b, err := m.MarshalVTStrict()
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.base.Marshal(v)
}

func (c vtCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.base.Unmarshal(data, v) }

func (c vtCodec) Name() string { return c.base.Name() }
