package processor

// forwardedHeaders are the header names the processor reads, in the
// lower case Envoy uses: the request's pseudo-headers, host, cookie,
// x-forwarded-proto and Sec-Fetch-*, and the response's set-cookie,
// clear-site-data, cache-control and the binding headers
// (default names: custom ones must be added to forward_rules too). exactField classifies exactly these
// (TestForwardedHeadersMatchFields keeps the two in step).
var forwardedHeaders = [...]string{
	":scheme", ":authority", ":path", ":method", "host", "cookie",
	"x-forwarded-proto", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest",
	"set-cookie", "clear-site-data", "cache-control",
	"proxysession-user", "proxysession-sid", "proxysession-logout", "proxysession-rotate",
}

// ForwardedHeaders returns the names of the headers proxysession reads,
// pseudo-headers included: what Envoy's ext_proc forward_rules must allow
// (allowed_headers, exact matches), and all it needs to send. Headers
// outside this list (Authorization, for one) need not leave Envoy.
func ForwardedHeaders() []string {
	return append([]string(nil), forwardedHeaders[:]...)
}
