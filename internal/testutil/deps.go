package testutil

import (
	"os/exec"
	"strings"
	"testing"
)

// RequireNoDeps fails unless the package pkg (an import path) links none of the packages whose
// import path starts with one of forbidden: the layering the layout promises.
func RequireNoDeps(tb testing.TB, pkg string, forbidden ...string) {
	tb.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		tb.Fatalf("go list -deps %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 2 {
		tb.Fatalf("go list -deps %s listed %v", pkg, deps)
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				tb.Errorf("%s links %s", pkg, d)
			}
		}
	}
}
