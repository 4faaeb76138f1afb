package sessions

import (
	"strings"
	"testing"
	"time"
)

func TestParseSetCookie(t *testing.T) {
	date := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		line   string
		want   setCookie
		reject RejectReason
	}{
		{line: "a=b", want: setCookie{name: "a", value: "b"}},
		{line: " a = b c ", want: setCookie{name: "a", value: "b c"}},
		{line: "\ta\t=\t\"b\"\t", want: setCookie{name: "a", value: `"b"`}},
		{line: "nameless", want: setCookie{value: "nameless"}},
		{line: "=v", want: setCookie{value: "v"}},
		{line: "a=", want: setCookie{name: "a"}},
		{line: "a=b=c", want: setCookie{name: "a", value: "b=c"}},
		{line: "a=ü\xff", want: setCookie{name: "a", value: "ü\xff"}},
		{line: "", reject: RejectEmpty},
		{line: "=", reject: RejectEmpty},
		{line: " ; Secure", reject: RejectEmpty},
		{line: "a=b\x00c", reject: RejectControlChar},
		{line: "a=b; Path=/\r", reject: RejectControlChar},
		{line: "a=b\x7f", reject: RejectControlChar},
		{line: "a=" + strings.Repeat("v", 4095), want: setCookie{name: "a", value: strings.Repeat("v", 4095)}},
		{line: "a=" + strings.Repeat("v", 4096), reject: RejectTooLarge},
		{line: "a=b; Secure; HttpOnly", want: setCookie{name: "a", value: "b", secure: true, httpOnly: true}},
		{line: "a=b; SECURE=no; httponly=x", want: setCookie{name: "a", value: "b", secure: true, httpOnly: true}},
		{line: "a=b; Max-Age=60; Max-Age=x; max-age=-3", want: setCookie{name: "a", value: "b", hasMaxAge: true, maxAge: -3}},
		{line: "a=b; Max-Age=99999999999999999999999", want: setCookie{name: "a", value: "b", hasMaxAge: true, maxAge: 1 << 62}},
		{line: "a=b; Expires=Wed, 02 Jan 2030 03:04:05 GMT; expires=junk", want: setCookie{name: "a", value: "b", hasExpires: true, expires: date}},
		{line: "a=b; Domain=.Example.COM", want: setCookie{name: "a", value: "b", hasDomain: true, domain: "example.com"}},
		// Only ASCII is lowered: the Kelvin sign stays non-ASCII, so the
		// storage model rejects the cookie (Unicode lowering would turn it
		// into "k").
		{line: "a=b; Domain=Kexample.com", want: setCookie{name: "a", value: "b", hasDomain: true, domain: "Kexample.com"}},
		{line: "a=b; Domain=example.com; Domain=", want: setCookie{name: "a", value: "b", hasDomain: true}},
		{line: "a=b; Path=/x; Path=relative", want: setCookie{name: "a", value: "b", hasPath: true}},
		{line: "a=b; Path=/" + strings.Repeat("p", 1023), want: setCookie{name: "a", value: "b", hasPath: true, path: "/" + strings.Repeat("p", 1023)}},
		{line: "a=b; Path=/ok; Path=/" + strings.Repeat("p", 1024), want: setCookie{name: "a", value: "b", hasPath: true, path: "/ok"}},
		{line: "a=b; SameSite=strict", want: setCookie{name: "a", value: "b", sameSite: SameSiteStrict}},
		{line: "a=b; SameSite=Lax", want: setCookie{name: "a", value: "b", sameSite: SameSiteLax}},
		{line: "a=b; SameSite=NONE", want: setCookie{name: "a", value: "b", sameSite: SameSiteNone}},
		{line: "a=b; SameSite=None; SameSite=bogus", want: setCookie{name: "a", value: "b", sameSite: SameSiteDefault}},
		{line: "a=b; unknown=1; ;;", want: setCookie{name: "a", value: "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.line[:min(len(tt.line), 40)], func(t *testing.T) {
			got, reject := parseSetCookie(tt.line)
			if reject != tt.reject {
				t.Fatalf("reject = %v, want %v", reject, tt.reject)
			}
			if reject != RejectNone {
				return
			}
			if got != tt.want {
				t.Errorf("parseSetCookie(%q)\n got %+v\nwant %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParseMaxAge(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"60", 60, true},
		{"-1", -1, true},
		{"007", 7, true},
		{"", 0, false},
		{"-", 0, false},
		{"+5", 0, false},
		{"5s", 0, false},
		{"1.5", 0, false},
		{"50,399", 0, false},
		{"-99999999999999999999", -1 << 62, true},
	}
	for _, tt := range tests {
		got, ok := parseMaxAge(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseMaxAge(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseCookieDate(t *testing.T) {
	tests := []struct {
		in   string
		want string // RFC 3339, or "" for a failure
	}{
		{"Sun, 06 Nov 1994 08:49:37 GMT", "1994-11-06T08:49:37Z"},
		{"Sunday, 06-Nov-94 08:49:37 GMT", "1994-11-06T08:49:37Z"},
		{"Sun Nov  6 08:49:37 1994", "1994-11-06T08:49:37Z"},
		{"6 november 2069 1:2:3", "2069-11-06T01:02:03Z"},
		{"6 Nov 69 1:2:3", "2069-11-06T01:02:03Z"},
		{"6 Nov 70 1:2:3", "1970-11-06T01:02:03Z"},
		{"29 Feb 2024 00:00:00", "2024-02-29T00:00:00Z"},
		{"1 Jan 1601 00:00:00", "1601-01-01T00:00:00Z"},
		{"31 Dec 9999 23:59:59", "9999-12-31T23:59:59Z"},
		{"01 Jan 2020 12:00:00xyz", "2020-01-01T12:00:00Z"},
		{"29 Feb 2023 00:00:00", ""}, // not a leap year
		{"31 Apr 2023 00:00:00", ""},
		{"1 Jan 1600 00:00:00", ""},
		{"0 Jan 2020 00:00:00", ""},
		{"32 Jan 2020 00:00:00", ""},
		{"1 Jan 2020 24:00:00", ""},
		{"1 Jan 2020 23:60:00", ""},
		{"1 Jan 2020 23:59:60", ""},
		{"1 Jan 2020 123:00:00", ""},
		{"1 Jan 20201 00:00:00", ""},
		{"1 Jan 2020", ""},
		{"Jan 2020 00:00:00", ""},
		{"", ""},
		{"garbage", ""},
	}
	for _, tt := range tests {
		got, ok := parseCookieDate(tt.in)
		if tt.want == "" {
			if ok {
				t.Errorf("parseCookieDate(%q) = %v, want failure", tt.in, got)
			}
			continue
		}
		if !ok || got.Format(time.RFC3339) != tt.want {
			t.Errorf("parseCookieDate(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
		}
	}
}

func TestCookiePairs(t *testing.T) {
	tests := []struct {
		values []string
		want   []string // pair|name
	}{
		{nil, nil},
		{[]string{""}, nil},
		{[]string{"a=b"}, []string{"a=b|a"}},
		{[]string{"a=b; c=d", "e=f"}, []string{"a=b|a", "c=d|c", "e=f|e"}},
		{[]string{" ; ;a=b;;\tc = d ;"}, []string{"a=b|a", "c = d|c"}},
		{[]string{"nameless; =v; x="}, []string{"nameless|", "=v|", "x=|x"}},
		{[]string{`q="a b"; u=\xff`}, []string{`q="a b"|q`, `u=\xff|u`}},
	}
	for _, tt := range tests {
		var got []string
		p := newCookiePairs(tt.values)
		for pair, name, ok := p.next(); ok; pair, name, ok = p.next() {
			got = append(got, pair+"|"+name)
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("pairs of %q = %q, want %q", tt.values, got, tt.want)
		}
	}
}

func TestClearsCookies(t *testing.T) {
	tests := []struct {
		values []string
		want   bool
	}{
		{nil, false},
		{[]string{`"cache"`}, false},
		{[]string{`"cookies"`}, true},
		{[]string{`"cache", "cookies"`}, true},
		{[]string{`"storage"`, ` "*" `}, true},
		{[]string{`cookies`}, false}, // unquoted: ignored, as by browsers
		{[]string{`"Cookies"`}, false},
		{[]string{`"cache,cookies"`}, false},
	}
	for _, tt := range tests {
		if got := clearsCookies(tt.values); got != tt.want {
			t.Errorf("clearsCookies(%q) = %v, want %v", tt.values, got, tt.want)
		}
	}
}

func TestPrivateCacheControl(t *testing.T) {
	tests := []struct {
		values []string
		want   string
	}{
		{nil, "private"},
		{[]string{"max-age=60"}, "max-age=60, private"},
		{[]string{"public, max-age=60, s-maxage=600"}, "max-age=60, private"},
		{[]string{"no-cache", "must-revalidate"}, "no-cache, must-revalidate, private"},
		{[]string{`no-cache="Set-Cookie, X-Y", max-age=5`}, `no-cache="Set-Cookie, X-Y", max-age=5, private`},
		{[]string{`private="Set-Cookie"`}, `private="Set-Cookie", private`},
		{[]string{"Private"}, ""},
		{[]string{"max-age=0, no-store"}, ""},
		{[]string{" , ,"}, "private"},
	}
	for _, tt := range tests {
		if got := privateCacheControl(tt.values); got != tt.want {
			t.Errorf("privateCacheControl(%q) = %q, want %q", tt.values, got, tt.want)
		}
	}
}

func TestCanonicalHost(t *testing.T) {
	tests := []struct {
		in   string
		host string
		isIP bool
	}{
		{"example.com", "example.com", false},
		{"Example.COM:8443", "example.com", false},
		{"127.0.0.1:80", "127.0.0.1", true},
		{"[::1]:8080", "::1", true},
		{"[2001:DB8::1]", "2001:db8::1", true},
		{"bücher.example", "xn--bcher-kva.example", false},
		{"::1", "", false},
		{"[::1", "", false},
		{"[nope]", "", false},
		{"", "", false},
		{":80", "", false},
		{"a b.example", "", false},
		{"a/b", "", false},
	}
	for _, tt := range tests {
		host, isIP := canonicalHost(tt.in)
		if host != tt.host || isIP != tt.isIP {
			t.Errorf("canonicalHost(%q) = %q, %v; want %q, %v", tt.in, host, isIP, tt.host, tt.isIP)
		}
	}
}

func TestPathAndDomainMatch(t *testing.T) {
	paths := []struct {
		req, cookie string
		want        bool
	}{
		{"/", "/", true},
		{"/a", "/", true},
		{"/a/b", "/a", true},
		{"/a/b", "/a/", true},
		{"/ab", "/a", false},
		{"/a", "/a/", false},
		{"/A", "/a", false},
	}
	for _, tt := range paths {
		if got := pathMatch(tt.req, tt.cookie); got != tt.want {
			t.Errorf("pathMatch(%q, %q) = %v", tt.req, tt.cookie, got)
		}
	}
	domains := []struct {
		host, domain string
		want         bool
	}{
		{"example.com", "example.com", true},
		{"www.example.com", "example.com", true},
		{"wwwexample.com", "example.com", false},
		{"example.com", "www.example.com", false},
		{"1.2.3.4", "1.2.3.4", true},
		{"1.2.3.4", "2.3.4", false},
	}
	for _, tt := range domains {
		if got := domainMatch(tt.host, tt.domain); got != tt.want {
			t.Errorf("domainMatch(%q, %q) = %v", tt.host, tt.domain, got)
		}
	}
	defaults := map[string]string{"": "/", "x": "/", "/": "/", "/a": "/", "/a/": "/a", "/a/b": "/a", "/a/b/c": "/a/b"}
	for in, want := range defaults {
		if got := defaultPath(in); got != want {
			t.Errorf("defaultPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseMaxAgeSaturates(t *testing.T) {
	for _, digits := range []int{18, 19, 20, 40} {
		s := strings.Repeat("9", digits)
		got, ok := parseMaxAge(s)
		if !ok || got <= 0 || got > 1<<62 {
			t.Errorf("parseMaxAge(%d nines) = %d, %v; want a positive value ≤ 2^62", digits, got, ok)
		}
		if got, _ := parseMaxAge("-" + s); got >= 0 {
			t.Errorf("parseMaxAge(-%d nines) = %d, want negative", digits, got)
		}
	}
}
