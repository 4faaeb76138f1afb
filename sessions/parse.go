package sessions

import (
	"strings"
	"time"
)

// Limits from RFC 6265bis §5.6.
const (
	maxNameValueBytes = 4096 // name plus value
	maxAttrValueBytes = 1024 // a longer attribute value is ignored
)

// setCookie is one Set-Cookie field value parsed by the algorithm of
// RFC 6265bis §5.6, before the storage model (§5.7) decides its fate.
// Attributes that occur more than once keep their last valid value.
type setCookie struct {
	name, value string

	hasMaxAge bool
	maxAge    int64 // seconds, saturated to ±1<<62

	hasExpires bool
	expires    time.Time

	hasDomain bool
	domain    string // lower-cased, leading "." removed; may be empty

	hasPath bool
	path    string // "" when the attribute was empty or not absolute: use the default path

	secure   bool
	httpOnly bool
	sameSite SameSite
}

// parseSetCookie parses a Set-Cookie field value. It fails only when the
// whole line must be ignored: a control character, an empty name and value,
// or a name and value longer than 4096 bytes.
func parseSetCookie(line string) (setCookie, RejectReason) {
	var sc setCookie
	if hasCTL(line) {
		return sc, RejectControlChar
	}
	pair, attrs, _ := strings.Cut(line, ";")
	if name, value, ok := strings.Cut(pair, "="); ok {
		sc.name, sc.value = trimWSP(name), trimWSP(value)
	} else {
		sc.value = trimWSP(pair)
	}
	if len(sc.name)+len(sc.value) > maxNameValueBytes {
		return sc, RejectTooLarge
	}
	if sc.name == "" && sc.value == "" {
		return sc, RejectEmpty
	}
	for attrs != "" {
		var av string
		av, attrs, _ = strings.Cut(attrs, ";")
		name, value, _ := strings.Cut(av, "=")
		name, value = trimWSP(name), trimWSP(value)
		if len(value) > maxAttrValueBytes {
			continue
		}
		sc.setAttribute(name, value)
	}
	return sc, RejectNone
}

// setAttribute applies one cookie-av (§5.6.1–5.6.7). Unknown attributes
// and invalid values are ignored, as browsers do.
func (sc *setCookie) setAttribute(name, value string) {
	switch {
	case strings.EqualFold(name, "expires"):
		if t, ok := parseCookieDate(value); ok {
			sc.hasExpires, sc.expires = true, t
		}
	case strings.EqualFold(name, "max-age"):
		if n, ok := parseMaxAge(value); ok {
			sc.hasMaxAge, sc.maxAge = true, n
		}
	case strings.EqualFold(name, "domain"):
		value = strings.TrimPrefix(value, ".")
		sc.hasDomain, sc.domain = true, lowerASCII(value)
	case strings.EqualFold(name, "path"):
		if !strings.HasPrefix(value, "/") {
			value = ""
		}
		sc.hasPath, sc.path = true, value
	case strings.EqualFold(name, "secure"):
		sc.secure = true
	case strings.EqualFold(name, "httponly"):
		sc.httpOnly = true
	case strings.EqualFold(name, "samesite"):
		switch {
		case strings.EqualFold(value, "none"):
			sc.sameSite = SameSiteNone
		case strings.EqualFold(value, "strict"):
			sc.sameSite = SameSiteStrict
		case strings.EqualFold(value, "lax"):
			sc.sameSite = SameSiteLax
		default:
			sc.sameSite = SameSiteDefault
		}
	}
}

// parseMaxAge parses delta-seconds with an optional leading "-" (§5.6.2),
// saturating instead of overflowing.
func parseMaxAge(s string) (int64, bool) {
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	const limit = 1 << 62
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n <= (limit-9)/10 {
			n = n*10 + int64(c-'0')
		} else {
			n = limit
		}
	}
	if neg {
		n = -n
	}
	return n, true
}

// hasCTL reports whether s holds a control character other than HTAB
// (%x00-08 / %x0A-1F / %x7F), which makes a Set-Cookie line invalid.
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// trimWSP removes leading and trailing SP and HTAB.
func trimWSP(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// lowerASCII lower-cases ASCII letters, allocating only when s has one in
// upper case.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// parseCookieDate implements the cookie-date algorithm of RFC 6265bis
// §5.1.1, which accepts the many date formats found in the wild.
func parseCookieDate(s string) (time.Time, bool) {
	var (
		foundTime, foundDay, foundMonth, foundYear bool
		hour, minute, second, day, year            int
		month                                      time.Month
	)
	for s != "" {
		// Skip delimiters, then take one date-token.
		i := 0
		for i < len(s) && isDateDelimiter(s[i]) {
			i++
		}
		s = s[i:]
		i = 0
		for i < len(s) && !isDateDelimiter(s[i]) {
			i++
		}
		token := s[:i]
		s = s[i:]
		if token == "" {
			break
		}
		switch {
		case !foundTime && parseHMS(token, &hour, &minute, &second):
			foundTime = true
		case !foundDay && parseDigits(token, 1, 2, &day):
			foundDay = true
		case !foundMonth && parseMonth(token, &month):
			foundMonth = true
		case !foundYear && parseDigits(token, 2, 4, &year):
			foundYear = true
		}
	}
	if !foundTime || !foundDay || !foundMonth || !foundYear {
		return time.Time{}, false
	}
	switch {
	case 70 <= year && year <= 99:
		year += 1900
	case 0 <= year && year <= 69:
		year += 2000
	}
	if day < 1 || day > 31 || year < 1601 || hour > 23 || minute > 59 || second > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, month, day, hour, minute, second, 0, time.UTC)
	if t.Day() != day { // 31 April and the like do not exist
		return time.Time{}, false
	}
	return t, true
}

// isDateDelimiter reports whether c is a cookie-date delimiter:
// %x09 / %x20-2F / %x3B-40 / %x5B-60 / %x7B-7E.
func isDateDelimiter(c byte) bool {
	return c == 0x09 || (0x20 <= c && c <= 0x2f) || (0x3b <= c && c <= 0x40) ||
		(0x5b <= c && c <= 0x60) || (0x7b <= c && c <= 0x7e)
}

// parseDigits matches minDigits*maxDigits DIGIT followed by nothing or by a
// non-digit and anything (the day-of-month and year productions).
func parseDigits(token string, minDigits, maxDigits int, out *int) bool {
	n, i := 0, 0
	for i < len(token) && i <= maxDigits && isDigit(token[i]) {
		n = n*10 + int(token[i]-'0')
		i++
	}
	if i < minDigits || i > maxDigits {
		return false
	}
	*out = n
	return true
}

// parseHMS matches the time production: hms-time [ non-digit *OCTET ].
func parseHMS(token string, hour, minute, second *int) bool {
	var fields [3]int
	for f := range fields {
		n, i := 0, 0
		for i < len(token) && i < 3 && isDigit(token[i]) {
			n = n*10 + int(token[i]-'0')
			i++
		}
		if i == 0 || i > 2 {
			return false
		}
		fields[f] = n
		token = token[i:]
		if f < 2 {
			if token == "" || token[0] != ':' {
				return false
			}
			token = token[1:]
		}
	}
	*hour, *minute, *second = fields[0], fields[1], fields[2]
	return true
}

var monthNames = [...]string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}

// parseMonth matches a month name's first three letters, any case,
// followed by anything.
func parseMonth(token string, out *time.Month) bool {
	if len(token) < 3 {
		return false
	}
	for i, m := range monthNames {
		if strings.EqualFold(token[:3], m) {
			*out = time.Month(i + 1)
			return true
		}
	}
	return false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
