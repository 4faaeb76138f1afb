package envoytest

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// HeaderMap returns a header map of key/value pairs, in order, with the
// values in raw_value as current Envoy sends them.
func HeaderMap(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(kv)/2)}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

// RequestHeaders returns a request_headers message of a request without a
// body, for tests that speak to an ext_proc server directly.
func RequestHeaders(kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: HeaderMap(kv...), EndOfStream: true}}}
}

// ResponseHeaders returns a response_headers message.
func ResponseHeaders(kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: HeaderMap(kv...)}}}
}

// RealisticRequest returns the request_headers message Envoy sends for a
// browser's page request with the given Cookie header: 16 headers, the
// pseudo-headers, those of a current Chrome, and Envoy's
// x-forwarded-proto and x-request-id. It is the fixture of the benchmarks
// (processor's BenchmarkHandle, internal/cmd/extproc-bench).
func RealisticRequest(cookie string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true, Headers: HeaderMap(
			":authority", "app.example.com", ":path", "/app/dashboard?tab=overview", ":method", "GET", ":scheme", "https",
			"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
			"accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
			"accept-language", "en-US,en;q=0.9", "accept-encoding", "gzip, deflate, br, zstd",
			"referer", "https://app.example.com/app/", "sec-fetch-site", "same-origin", "sec-fetch-mode", "navigate",
			"sec-fetch-dest", "document", "sec-ch-ua", `"Chromium";v="131", "Not_A Brand";v="24"`,
			"cookie", cookie, "x-forwarded-proto", "https", "x-request-id", "0b0c2a55-8d8f-4a7e-9d6f-6f3c7c1b9e21",
		)}},
		MetadataContext: &corev3.Metadata{},
		ProtocolConfig:  &extprocv3.ProtocolConfiguration{},
	}
}
