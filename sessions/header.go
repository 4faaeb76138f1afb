package sessions

import "strings"

// cookiePairs iterates over the name=value pairs of Cookie header field
// values, as a server reads them: pairs split at ";", surrounding SP and
// HTAB trimmed, empty pairs skipped, a pair without "=" has an empty name
// (browsers send a nameless cookie as its value alone). The pair is
// returned byte-exact, so it can be forwarded unchanged.
type cookiePairs struct {
	values []string
	rest   string
}

func newCookiePairs(values []string) cookiePairs {
	return cookiePairs{values: values}
}

// next returns the next pair and its name; ok is false at the end.
func (p *cookiePairs) next() (pair, name string, ok bool) {
	for {
		for p.rest == "" {
			if len(p.values) == 0 {
				return "", "", false
			}
			p.rest, p.values = p.values[0], p.values[1:]
		}
		if i := strings.IndexByte(p.rest, ';'); i >= 0 {
			pair, p.rest = p.rest[:i], p.rest[i+1:]
		} else {
			pair, p.rest = p.rest, ""
		}
		if pair = trimWSP(pair); pair == "" {
			continue
		}
		name = ""
		if i := strings.IndexByte(pair, '='); i >= 0 {
			name = trimWSP(pair[:i])
		}
		return pair, name, true
	}
}

// clearsCookies reports whether Clear-Site-Data field values ask to clear
// cookies: a "cookies" or "*" quoted-string entry (W3C Clear Site Data §3.1;
// like browsers, unquoted entries are ignored).
func clearsCookies(values []string) bool {
	for _, v := range values {
		for v != "" {
			var item string
			item, v = nextListItem(v)
			switch item {
			case `"cookies"`, `"*"`:
				return true
			}
		}
	}
	return false
}

// nextListItem splits the first element off an HTTP list (RFC 9110 §5.6.1):
// up to the first comma outside a quoted-string, trimmed.
func nextListItem(v string) (item, rest string) {
	quoted := false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			return trimWSP(v[:i]), v[i+1:]
		}
	}
	return trimWSP(v), ""
}

// privateCacheControl returns the Cache-Control value for a response that
// carries a proxy-issued Set-Cookie: shared caches must not store it, or
// they would hand one user's session cookie to others. The backend's own
// directives are kept, except "public" and "s-maxage", which speak only to
// shared caches and would contradict "private". It returns "" when the
// response already keeps out of shared caches ("private" or "no-store").
func privateCacheControl(values []string) string {
	var kept []string
	for _, v := range values {
		for v != "" {
			var item string
			if item, v = nextListItem(v); item == "" {
				continue
			}
			name, _, _ := strings.Cut(item, "=")
			switch name = lowerASCII(trimWSP(name)); name {
			case "private", "no-store":
				if name == "no-store" || !strings.Contains(item, "=") {
					return ""
				}
			case "public", "s-maxage":
				continue
			}
			kept = append(kept, item)
		}
	}
	return strings.Join(append(kept, "private"), ", ")
}
