package comet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientTypesCheck type-checks examples of both builds of the browser
// client (the global of comet.js, the module comet.mjs) against their
// declarations with the typescript pinned in client/typecheck, and checks
// that mistakes are caught. Without npm the test fails where
// COMET_REQUIRE_NODE is set (.ci/run sets it) and is skipped elsewhere.
func TestClientTypesCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("installs typescript from npm")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		if os.Getenv("COMET_REQUIRE_NODE") != "" {
			t.Fatal("npm is not installed, and COMET_REQUIRE_NODE says the client's types must be checked")
		}
		t.Skip("npm is not installed (apt-get install nodejs npm); skipping the type check")
	}
	dir, err := filepath.Abs(filepath.Join("client", "typecheck"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "typescript")); err != nil {
		if out, err := run("npm", "ci", "--no-audit", "--no-fund"); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}
	tsc := filepath.Join(dir, "node_modules", ".bin", "tsc")
	if out, err := run(tsc, "-p", "."); err != nil {
		t.Fatalf("the examples do not type-check: %v\n%s", err, out)
	}
	out, err := run(tsc, "--noEmit", "--strict", "--target", "ES2022", "--module", "ESNext",
		"--moduleResolution", "Bundler", "--lib", "ES2022,DOM", "wrong-example.ts")
	if err == nil {
		t.Fatal("wrong-example.ts type-checks: the declarations catch nothing")
	}
	for _, want := range []string{
		"wrong-example.ts(4,", // a transport that does not exist
		"wrong-example.ts(5,", // data is a string
		"wrong-example.ts(6,", // the cursor may be null
	} {
		if !strings.Contains(out, want) {
			t.Errorf("tsc did not report %s...:\n%s", want, out)
		}
	}
}
