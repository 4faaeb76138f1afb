package envoytest

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Header is one entry of an Envoy header map. Keys are lower case.
type Header struct {
	Key   string
	Value []byte
}

// Envoy's default header limits (HCM max_headers_count, max_request_headers_kb).
const (
	maxHeaders     = 100
	maxHeaderBytes = 60 << 10
)

// ApplyMutation applies a HeaderMutation to an Envoy header map as
// Envoy's MutationUtils::applyHeaderMutations does with the default
// mutation rules: all removals first, then the sets in order; a
// HeaderValue with both value and raw_value, an invalid name or value, or
// a result over the header limits is an error; value alone yields an
// empty header (current Envoy reads raw_value only); append_action is
// ignored and append defaults to false; a disallowed mutation (pseudo
// headers, host, x-envoy-*) is skipped and counted in rejected.
func ApplyMutation(headers *[]Header, m *extprocv3.HeaderMutation) (rejected int, err error) {
	if len(m.GetRemoveHeaders()) > maxHeaders || len(m.GetSetHeaders()) > maxHeaders {
		return 0, errors.New("too many header mutations")
	}
	for _, name := range m.GetRemoveHeaders() {
		if !validName(name) {
			return rejected, fmt.Errorf("invalid header name %q to remove", name)
		}
		name = strings.ToLower(name)
		if strings.HasPrefix(name, ":") || name == "host" || strings.HasPrefix(name, "x-envoy-") {
			rejected++
			continue
		}
		*headers = slices.DeleteFunc(*headers, func(h Header) bool { return h.Key == name })
	}
	for _, opt := range m.GetSetHeaders() {
		hv := opt.GetHeader()
		if hv == nil {
			continue
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) > 0 {
			return rejected, errors.New("only one of value or raw_value in the HeaderValue message should be set")
		}
		key := strings.ToLower(hv.GetKey())
		value := slices.Clone(hv.GetRawValue()) // value alone is ignored: an empty header
		if !validName(key) {
			return rejected, fmt.Errorf("invalid header name %q", hv.GetKey())
		}
		if !validValue(value) {
			return rejected, fmt.Errorf("invalid value for header %q", key)
		}
		exists := hasHeader(*headers, key)
		//lint:ignore SA1019 Envoy ignores append_action (envoyproxy/envoy#36982) and reads append, as this stand-in must
		appendValue := opt.GetAppend().GetValue() && exists
		switch {
		case key == "host" || key == ":authority" || key == ":method" || key == ":scheme" || strings.HasPrefix(key, "x-envoy-"):
			rejected++
			continue
		case appendValue && strings.HasPrefix(key, ":"):
			rejected++
			continue
		}
		if appendValue {
			*headers = append(*headers, Header{key, value})
			continue
		}
		replaced := false
		kept := (*headers)[:0]
		for _, h := range *headers {
			if h.Key != key {
				kept = append(kept, h)
			} else if !replaced {
				kept = append(kept, Header{key, value})
				replaced = true
			}
		}
		if !replaced {
			kept = append(kept, Header{key, value})
		}
		*headers = kept
	}
	size := 0
	for _, h := range *headers {
		size += len(h.Key) + len(h.Value)
	}
	if len(*headers) > maxHeaders || size > maxHeaderBytes {
		return rejected, errors.New("header map over the size limits after mutation")
	}
	return rejected, nil
}

// validName implements Envoy's header name check: token characters, and
// ':' only as the first character.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == ':' && i == 0 {
			continue
		}
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// validValue implements Envoy's header value check: HTAB, 0x20-0x7E and
// obs-text 0x80-0xFF only.
func validValue(v []byte) bool {
	for _, c := range v {
		if c != '\t' && (c < 0x20 || c == 0x7f) {
			return false
		}
	}
	return true
}

func hasHeader(headers []Header, key string) bool {
	for _, h := range headers {
		if h.Key == key {
			return true
		}
	}
	return false
}
