package config

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEListsEveryFlag keeps the README's configuration table in step
// with the flags: every flag and its environment variable are in it.
func TestREADMEListsEveryFlag(t *testing.T) {
	var usage bytes.Buffer
	if _, err := Parse([]string{"-help"}, func(string) (string, bool) { return "", false }, &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-help: %v", err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`(?m)^  -(\S+) `).FindAllStringSubmatch(usage.String(), -1)
	if len(names) < 20 {
		t.Fatalf("found %d flags in the usage text", len(names))
	}
	for _, m := range names {
		name := m[1]
		if !strings.Contains(string(readme), "`-"+name+"`") {
			t.Errorf("README.md's configuration table lacks -%s", name)
		}
		if env := envName(name); !strings.Contains(string(readme), "`"+env+"`") {
			t.Errorf("README.md's configuration table lacks %s", env)
		}
	}
}
