package storetest

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// testOnly are the packages that import "testing": only test files (and
// storetest itself, for browsertest) may import them.
var testOnly = []string{
	"github.com/proxysession/proxysession/sessions/storetest",
	"github.com/proxysession/proxysession/internal/browsertest",
}

// TestNoProgramImportsStoretest: the package imports "testing" and its
// suite, so only test files may import it. Every other Go file of the
// module is checked; a program that imported it would carry both.
func TestNoProgramImportsStoretest(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	checked, sawEngine := 0, false
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		rel, _ := filepath.Rel(root, path)
		sawEngine = sawEngine || filepath.ToSlash(rel) == "sessions/cache.go"
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if slices.Contains(testOnly, p) && !strings.HasPrefix(filepath.ToSlash(rel), "sessions/storetest/") {
				t.Errorf("%s imports %s, which is for tests only", rel, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sawEngine || checked < 10 {
		t.Fatalf("checked %d files under %s, not the module (sessions/cache.go seen: %v)", checked, root, sawEngine)
	}
}

// moduleRoot returns the directory of the go.mod above the package.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fs.ErrNotExist
		}
		dir = parent
	}
}
