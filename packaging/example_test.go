package packaging

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/snare-dev/snare/control/config"

	yaml "go.yaml.in/yaml/v3"
)

const (
	exampleConfig = "../examples/snare.yaml"
	// defaultsConfig is the daemon's defaults, embedded in it: every key it knows.
	defaultsConfig = "../control/config/defaults.yaml"
)

// flatKeys lists the leaf keys of a YAML document as dotted paths.
func flatKeys(t *testing.T, doc []byte) []string {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			out = append(out, prefix+k)
		}
	}
	walk("", m)
	slices.Sort(out)
	return out
}

// TestExampleConfigHasEveryKey: the shipped example names every key the daemon knows, no more.
func TestExampleConfigHasEveryKey(t *testing.T) {
	example, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := os.ReadFile(defaultsConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := flatKeys(t, defaults)
	got := flatKeys(t, example)
	if !slices.Equal(got, want) {
		t.Fatalf("example keys differ from the daemon's:\n got  %v\n want %v", got, want)
	}
	// Every key has a comment: its own line or the line above says what it does.
	lines := strings.Split(string(example), "\n")
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") || strings.HasSuffix(trimmed, ":") {
			continue // comments, blank lines and section headers
		}
		prev := ""
		if i > 0 {
			prev = strings.TrimSpace(lines[i-1])
		}
		// Keys directly after another commented key share its comment (e.g. min_prefix_v4/v6).
		if !strings.Contains(line, "#") && !strings.HasPrefix(prev, "#") && !sharesComment(lines, i) {
			t.Errorf("line %d has no comment: %s", i+1, line)
		}
	}
}

// sharesComment reports whether line i belongs to a run of keys that a comment above introduces.
func sharesComment(lines []string, i int) bool {
	for j := i - 1; j >= 0; j-- {
		s := strings.TrimSpace(lines[j])
		switch {
		case strings.HasPrefix(s, "#"):
			return true
		case s == "" || strings.HasSuffix(s, ":"):
			return false
		}
	}
	return false
}

// TestExampleConfigIsTheDefaults: loading the example gives exactly the built-in defaults, so the
// example documents the truth and an installed, untouched copy changes nothing.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	def, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := config.Load(config.LoadOptions{File: exampleConfig})
	if err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	if !reflect.DeepEqual(def, ex) {
		a, _ := def.YAML()
		b, _ := ex.YAML()
		t.Fatalf("example differs from the defaults:\n--- defaults\n%s\n--- example\n%s", a, b)
	}
}
