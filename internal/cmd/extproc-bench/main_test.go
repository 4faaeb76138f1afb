package main

import (
	"bytes"
	"os"
	"regexp"
	"testing"
	"time"
)

// TestMain lets the test binary be the benchmark's child server, as the
// command re-executes itself for each target.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBench runs a short benchmark of both targets, paced and not, and
// checks the report.
func TestBench(t *testing.T) {
	for _, rate := range []int{200, 0} {
		b := &bench{rate: rate, duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond, concurrency: 4, connections: 1, sessions: 20}
		var out bytes.Buffer
		if err := b.run([]string{"noop", "proxysession"}, 1, &out); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`(?m)^ +noop +\d+ `, `(?m)^ +proxysession +\d+ `, `proxysession/noop: CPU per request \d+\.\d\d×`} {
			if !regexp.MustCompile(want).MatchString(out.String()) {
				t.Errorf("rate %d: report lacks %s:\n%s", rate, want, out.String())
			}
		}
	}
}
