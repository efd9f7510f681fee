package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runSnared(args []string, env ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, env, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("block:\n  ttl: 12h\ntrap:\n  threshold: 2\n"), 0o600)
	code, out, _ := runSnared([]string{"--check-config", "--config", good, "--state-dir", "/tmp/snare-x"}, "SNARE_SWEEP_INTERVAL=30s")
	if code != 0 {
		t.Fatalf("valid config: exit %d", code)
	}
	for _, want := range []string{"ttl: 12h", "threshold: 2", "state_dir: /tmp/snare-x", "interval: 30s"} {
		if !strings.Contains(out, want) {
			t.Errorf("merged config lacks %q:\n%s", want, out)
		}
	}

	notCreds := filepath.Join(dir, "cert.pem")
	os.WriteFile(notCreds, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o600)
	for name, tc := range map[string]struct {
		file, env, want string
	}{
		"broken yaml":      {file: "block: [\n", want: "config file"},
		"unknown key":      {file: "blok:\n  ttl: 5d\n", want: "unknown key"},
		"bad ttl":          {file: "block:\n  ttl: -5d\n", want: "block.ttl"},
		"bad backend env":  {env: "SNARE_BACKEND=ebpf", want: "backend"},
		"missing file":     {file: "-", want: "does not exist"},
		"missing creds":    {file: "fleet:\n  creds: " + filepath.Join(dir, "nope.creds") + "\n", want: "fleet.creds: stat " + filepath.Join(dir, "nope.creds") + ": no such file"},
		"not a creds file": {file: "fleet:\n  creds: " + notCreds + "\n", want: "fleet.creds: " + notCreds + " is not a NATS credentials file"},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"--check-config"}
			if tc.file == "-" {
				args = append(args, "--config", filepath.Join(dir, "nope.yaml"))
			} else if tc.file != "" {
				f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
				os.WriteFile(f, []byte(tc.file), 0o600)
				args = append(args, "--config", f)
			}
			var env []string
			if tc.env != "" {
				env = append(env, tc.env)
			}
			code, out, errs := runSnared(args, env...)
			if code != exitError || out != "" || !strings.Contains(errs, tc.want) || !strings.HasPrefix(errs, "Error: ") {
				t.Errorf("exit %d, stdout %q, stderr %q: want exit 1 and an error naming %q", code, out, errs, tc.want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"start"}, {"uninstall", "now"}, {"--backend"}} {
		code, _, errs := runSnared(args)
		if code != exitUsage || !strings.Contains(errs, "Error:") {
			t.Errorf("snared %v: exit %d, stderr %q; want exit 2 with an error", args, code, errs)
		}
	}
	if code, _, errs := runSnared([]string{"--backend", "nft", "--print-config"}); code != exitError || !strings.Contains(errs, "backend") {
		t.Errorf("bad --backend value: exit %d, %q", code, errs)
	}
	if code, out, _ := runSnared([]string{"--version"}); code != 0 || !strings.HasPrefix(out, "snared ") {
		t.Errorf("--version: %d %q", code, out)
	}
}

// The committed docs/snared.md and docs/man/snared.8 are what gen-docs writes from the flags now.
func TestDocsFresh(t *testing.T) {
	dir := t.TempDir()
	var stderr strings.Builder
	if code := run([]string{"gen-docs", dir}, nil, io.Discard, &stderr); code != exitOK {
		t.Fatalf("gen-docs: %d %s", code, stderr.String())
	}
	for _, f := range []string{"snared.md", "man/snared.8"} {
		fresh, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join("..", "..", "docs", f))
		if err != nil || string(committed) != string(fresh) {
			t.Errorf("docs/%s is stale (%v): run 'go run ./cmd/snared gen-docs docs'", f, err)
		}
		if !strings.Contains(string(fresh), "SNARE_XDP_MODE") {
			t.Errorf("docs/%s lacks the flags", f)
		}
	}
}
