package processor

import (
	"slices"
	"testing"
)

// TestForwardedHeadersMatchFields: ForwardedHeaders lists exactly the
// header names the processor classifies, each once.
func TestForwardedHeadersMatchFields(t *testing.T) {
	seen := map[field]string{}
	for _, name := range ForwardedHeaders() {
		f := exactField(name)
		if f == fieldOther {
			t.Errorf("%q is listed but the processor does not read it", name)
		}
		if prev, ok := seen[f]; ok {
			t.Errorf("%q and %q are the same field", prev, name)
		}
		seen[f] = name
	}
	for f := fieldOther + 1; f <= fieldRotate; f++ {
		if _, ok := seen[f]; !ok {
			t.Errorf("field %d is read by the processor but not in ForwardedHeaders", f)
		}
	}
	// The last field constant must be fieldRotate: a field added
	// after it has to be added to the loop bound above and to the list.
	if exactField("proxysession-rotate") != fieldRotate || fieldRotate != field(len(forwardedHeaders)) {
		t.Errorf("%d fields, %d names: a new field constant needs a name in forwardedHeaders", fieldRotate, len(forwardedHeaders))
	}
	got := ForwardedHeaders()
	got[0] = "mutated"
	if slices.Contains(ForwardedHeaders(), "mutated") {
		t.Error("ForwardedHeaders returns the package's own array")
	}
}
