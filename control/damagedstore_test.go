package control

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/testutil"
)

// A damaged store stops the daemon's start with ErrStoreCorrupt naming the file, and the
// enforcer keeps what it holds.
func TestOpenRefusesDamagedStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	s, err := store.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *store.Tx) error {
		return tx.PutRule(store.Rule{Prefix: netip.MustParsePrefix("198.18.5.6/32"), Created: time.Now()})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	testutil.DamageStoreMeta(t, path)

	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Dir(path)
	f := &testutil.MemEnforcer{}
	held := netip.MustParsePrefix("198.18.5.5/32")
	f.Put(backend.RuleState{Rule: backend.Rule{Prefix: held}})
	_, err = Open(context.Background(), Options{Config: cfg,
		OpenEnforcer:  func() (backend.Enforcer, string, error) { return f, "", nil },
		ImplicitAllow: func() (Allowlist, error) { return nil, nil },
		Listening:     func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if !errors.Is(err, store.ErrStoreCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open: %v; want ErrStoreCorrupt naming %s", err, path)
	}
	if f.Len() != 1 || f.Allowed() != nil {
		t.Errorf("the refused start changed the enforcer: rules %v, allow %v", f.Held(), f.Allowed())
	}
}
