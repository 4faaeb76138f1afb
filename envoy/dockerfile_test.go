package envoy_test

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/proxysession/proxysession/internal/config"
)

// TestDockerfile parses the Dockerfile with BuildKit's parser and linter
// and checks the image: static binary, distroless non-root runtime, a
// health check through the binary, the ports proxysession listens on,
// and the stages docker-compose.yml builds.
func TestDockerfile(t *testing.T) {
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, _ []parser.Range) {
		warnings = append(warnings, rule+": "+msg)
	}})
	stages, _, err := instructions.Parse(ast.AST, lint)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("BuildKit lint warnings: %q", warnings)
	}
	byName := map[string]instructions.Stage{}
	for _, s := range stages {
		byName[s.Name] = s
	}
	if last := stages[len(stages)-1]; last.Name != "proxysession" {
		t.Errorf("the default (last) stage is %q, want proxysession", last.Name)
	}
	for _, name := range []string{"proxysession", "demo"} {
		s, ok := byName[name]
		if !ok {
			t.Fatalf("no stage %q (docker-compose.yml builds it)", name)
		}
		if !strings.HasPrefix(s.BaseName, "gcr.io/distroless/static") || !strings.HasSuffix(s.BaseName, ":nonroot") {
			t.Errorf("stage %s runs on %s, want distroless static nonroot", name, s.BaseName)
		}
		var user string
		for _, c := range s.Commands {
			if u, ok := c.(*instructions.UserCommand); ok {
				user = u.User
			}
		}
		if uid, _, _ := strings.Cut(user, ":"); uid == "" || uid == "0" || uid == "root" {
			t.Errorf("stage %s runs as %q, want a non-root user", name, user)
		}
	}

	// The build image is the Go version go.mod requires, and uses only
	// the toolchain it has.
	goLine := goDirective(t, "../go.mod")
	if base := byName["build"].BaseName; base != "golang:"+goLine {
		t.Errorf("build stage on %s: want golang:%s, the version of go.mod's go line (GOTOOLCHAIN=local fails on an older one)", base, goLine)
	}
	var local bool
	for _, c := range byName["build"].Commands {
		if e, ok := c.(*instructions.EnvCommand); ok {
			for _, kv := range e.Env {
				local = local || kv.Key == "GOTOOLCHAIN" && kv.Value == "local"
			}
		}
	}
	if !local {
		t.Error("the build stage does not set GOTOOLCHAIN=local: a mismatched image would download another toolchain")
	}

	var build strings.Builder
	for _, c := range byName["build"].Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			build.WriteString(strings.Join(r.CmdLine, " "))
		}
	}
	if b := build.String(); !strings.Contains(b, "CGO_ENABLED=0") || !strings.Contains(b, "-trimpath") {
		t.Errorf("build step %q: want a static (CGO_ENABLED=0), -trimpath build", b)
	}

	var exposed []string
	var health *instructions.HealthCheckCommand
	for _, c := range byName["proxysession"].Commands {
		switch c := c.(type) {
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.HealthCheckCommand:
			health = c
		}
	}
	for _, addr := range []string{config.DefaultGRPCAddr, config.DefaultAdminAddr} {
		if port := strconv.Itoa(int(portOf(t, addr))); !slices.Contains(exposed, port) {
			t.Errorf("EXPOSE %v lacks %s", exposed, port)
		}
	}
	if health == nil || !slices.Equal(health.Health.Test, []string{"CMD", "/proxysession", "healthcheck"}) {
		t.Errorf("HEALTHCHECK %+v, want CMD /proxysession healthcheck", health)
	}
}

// goDirective returns the version of a go.mod's go line.
func goDirective(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no go line", path)
	return ""
}
