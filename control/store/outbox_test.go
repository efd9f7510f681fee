package store

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

func TestOutboxSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli())
	block := Rule{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Reason: "manual", Origin: api.OriginManual,
		Created: now, Deadline: now.Add(time.Hour), Offences: 1, LastOffence: now}
	v6 := Rule{Prefix: netip.MustParsePrefix("2001:db8::/64"), Origin: api.OriginTrap, Created: now, LastOffence: now}
	unblock := Rule{Prefix: block.Prefix, LastOffence: now.Add(time.Second)}
	err = s.Update(func(tx *Tx) error {
		return tx.AppendOutbox(OutboxEntry{Rule: block}, OutboxEntry{Rule: v6}, OutboxEntry{Unblock: true, Rule: unblock},
			OutboxEntry{Bulk: []byte("packed blocks")})
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenStore(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := s.OutboxLen(); n != 4 {
		t.Fatalf("outbox length %d, want 4", n)
	}
	got, err := s.ReadOutbox(2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Rule != block || got[0].Unblock || got[1].Rule != v6 || got[0].Seq >= got[1].Seq {
		t.Fatalf("read %+v", got)
	}
	if err := s.DeleteOutbox(got[1].Seq); err != nil {
		t.Fatal(err)
	}
	rest, err := s.ReadOutbox(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 2 || !rest[0].Unblock || rest[0].Rule.Prefix != block.Prefix || !rest[0].Rule.LastOffence.Equal(unblock.LastOffence) {
		t.Fatalf("after delete: %+v", rest)
	}
	if b := rest[1]; string(b.Bulk) != "packed blocks" || b.Unblock || b.Rule.Prefix.IsValid() {
		t.Fatalf("bulk entry read back as %+v", b)
	}
}

func TestFleetRuleRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli())
	r := Rule{Prefix: netip.MustParsePrefix("198.18.0.9/32"), Reason: "trap tcp/1", Origin: api.OriginFleet,
		Created: now, Deadline: now.Add(time.Hour), Offences: 1, LastOffence: now, Node: "web-1", Revision: 42}
	if err := s.Update(func(tx *Tx) error { return tx.PutRule(r) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenStore(path); err != nil { // the open checks every record
		t.Fatal(err)
	}
	defer s.Close()
	var got Rule
	if err := s.View(func(tx *Tx) error { got, _, err = tx.Rule(r.Prefix); return err }); err != nil {
		t.Fatal(err)
	}
	if got != r {
		t.Fatalf("got %+v, want %+v", got, r)
	}
}

// A read of the outbox stops at about outboxReadBytes: bulk entries are big.
func TestReadOutboxBoundsBytes(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "snare.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := make([]byte, 1<<20)
	err = s.Update(func(tx *Tx) error {
		for range 20 {
			if err := tx.AppendOutbox(OutboxEntry{Bulk: big}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadOutbox(1000)
	if err != nil {
		t.Fatal(err)
	}
	if want := outboxReadBytes / len(big); len(got) != want {
		t.Fatalf("read %d entries of 1 MB, want %d", len(got), want)
	}
}
