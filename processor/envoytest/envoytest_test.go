package envoytest

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func set(key, value string, raw bool, appendValue *bool) *corev3.HeaderValueOption {
	hv := &corev3.HeaderValue{Key: key}
	if raw {
		hv.RawValue = []byte(value)
	} else {
		hv.Value = value
	}
	o := &corev3.HeaderValueOption{Header: hv}
	if appendValue != nil {
		//lint:ignore SA1019 Envoy ignores append_action (envoyproxy/envoy#36982); the tests pin how append is read
		o.Append = wrapperspb.Bool(*appendValue)
	}
	return o
}

func render(h []Header) string {
	var parts []string
	for _, e := range h {
		parts = append(parts, e.Key+"="+string(e.Value))
	}
	return strings.Join(parts, " ")
}

// TestApplyMutation pins the Envoy behaviour the processor's tests rely on.
func TestApplyMutation(t *testing.T) {
	yes, no := true, false
	base := func() []Header {
		return []Header{{":path", []byte("/")}, {"cookie", []byte("a=1")}, {"cookie", []byte("b=2")}, {"set-cookie", []byte("s=1")}, {"set-cookie", []byte("s=2")}}
	}
	tests := []struct {
		name     string
		m        *extprocv3.HeaderMutation
		want     string
		rejected int
		err      string
	}{
		{"set replaces every entry", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("cookie", "c=3", true, nil)}},
			":path=/ cookie=c=3 set-cookie=s=1 set-cookie=s=2", 0, ""},
		{"removals run before sets", &extprocv3.HeaderMutation{RemoveHeaders: []string{"set-cookie"},
			SetHeaders: []*corev3.HeaderValueOption{set("set-cookie", "x=1", true, &yes), set("set-cookie", "y=2", true, &yes)}},
			":path=/ cookie=a=1 cookie=b=2 set-cookie=x=1 set-cookie=y=2", 0, ""},
		{"append unset or false overwrites", &extprocv3.HeaderMutation{RemoveHeaders: []string{"set-cookie"},
			SetHeaders: []*corev3.HeaderValueOption{set("set-cookie", "x=1", true, nil), set("set-cookie", "y=2", true, &no)}},
			":path=/ cookie=a=1 cookie=b=2 set-cookie=y=2", 0, ""},
		{"append_action is ignored", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: "cookie", RawValue: []byte("z=9")}, AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}}},
			":path=/ cookie=z=9 set-cookie=s=1 set-cookie=s=2", 0, ""},
		{"value alone is an empty header", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("cookie", "c=3", false, nil)}},
			":path=/ cookie= set-cookie=s=1 set-cookie=s=2", 0, ""},
		{"both value and raw_value is an error", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: "cookie", Value: "v", RawValue: []byte("r")}}}}, "", 0, "only one of value or raw_value"},
		{"CR in a value is an error", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("cookie", "a\r\nb", true, nil)}}, "", 0, "invalid value"},
		{"bad name is an error", &extprocv3.HeaderMutation{RemoveHeaders: []string{"bad name"}}, "", 0, "invalid header name"},
		{"pseudo-headers and host cannot be removed", &extprocv3.HeaderMutation{RemoveHeaders: []string{":path", "host"}},
			":path=/ cookie=a=1 cookie=b=2 set-cookie=s=1 set-cookie=s=2", 2, ""},
		{"x-envoy headers are not touched", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("x-envoy-foo", "1", true, nil)}},
			":path=/ cookie=a=1 cookie=b=2 set-cookie=s=1 set-cookie=s=2", 1, ""},
		{"keys are lowered", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("Cookie", "c=3", true, nil)}},
			":path=/ cookie=c=3 set-cookie=s=1 set-cookie=s=2", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := base()
			rejected, err := ApplyMutation(&h, tt.m)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := render(h); got != tt.want || rejected != tt.rejected {
				t.Errorf("got %q (rejected %d)\nwant %q (rejected %d)", got, rejected, tt.want, tt.rejected)
			}
		})
	}
}
