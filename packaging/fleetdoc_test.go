package packaging

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"

	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/internal/testutil"
)

const fleetDoc = "../docs/fleet.md"

// writeCreds writes a real NATS credentials file (a user JWT and its nkey seed) to path.
func writeCreds(t *testing.T, path string) {
	t.Helper()
	tok, seed := testutil.NATSUser(t)
	text, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestFleetDocExamplesLoad: every YAML block of docs/fleet.md is a fleet section the daemon's
// config loader accepts as a drop-in (known keys, valid values), with its files in place of
// /etc/snare.
func TestFleetDocExamplesLoad(t *testing.T) {
	doc, err := os.ReadFile(fleetDoc)
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	// (a) one for every host, (b) engine hosts and the others, (c) the server and the client.
	if len(blocks) != 5 {
		t.Fatalf("%s has %d yaml blocks, want 5", fleetDoc, len(blocks))
	}
	etc := t.TempDir()
	writeCreds(t, filepath.Join(etc, "fleet.creds"))
	if err := os.WriteFile(filepath.Join(etc, "nats-ca.pem"), []byte("a CA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		text := strings.ReplaceAll(b[1], "/etc/snare/", etc+"/")
		file := filepath.Join(t.TempDir(), "50-fleet.yaml")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(config.LoadOptions{File: file, Env: []string{"SNARE_STATE_DIR=" + t.TempDir()}})
		if err != nil {
			t.Errorf("yaml block %d of %s: %v\n%s", i+1, fleetDoc, err, b[1])
			continue
		}
		if !c.FleetEnabled() {
			t.Errorf("yaml block %d of %s configures no fleet:\n%s", i+1, fleetDoc, b[1])
		}
	}
}
