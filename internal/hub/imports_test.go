package hub

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestHubKnowsNothingOfTheRest: the hub imports none of comet's other
// packages, nor HTTP or Redis, so that each stays behind its interface.
func TestHubKnowsNothingOfTheRest(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/caddy-comet/") || strings.HasPrefix(path, "net/http") ||
				strings.Contains(path, "redis") || strings.HasPrefix(path, "github.com/caddyserver/caddy/v2/") {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
