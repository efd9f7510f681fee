package control_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/internal/testutil"

	"github.com/snare-dev/snare/control/store"

	bolt "go.etcd.io/bbolt"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
)

// storeFixturePath is a store written by snare with store format 3, gzipped: bbolt grows a file
// by 16 MB at a time, nearly all zeros. It is committed so that a later snared proves it still
// opens the stores of this release: when the format changes, write a new fixture named after
// the new format beside it (a new writer and content function) and keep this one and its test.
//
//	SNARE_WRITE_FIXTURE=1 go test ./control -run TestWriteStoreFixture
const storeFixturePath = "testdata/store-v3.db.gz"

// storeFixture is the content of the fixture store.
type storeFixture struct {
	rules    []store.Rule // in prefix order
	allow    []store.AllowRecord
	offences map[netip.Prefix]store.Offence
	expired  netip.Prefix // the one rule whose deadline has passed
}

// fixtureContent is the fixed content the fixture was written with. The fixture test compares
// the committed file against it: changing it means regenerating the file.
func fixtureContent() storeFixture {
	at := func(s string) time.Time {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		return t
	}
	created := at("2025-03-01T08:00:00Z")
	far := at("2099-01-01T00:00:00Z")
	v4 := func(a, b, c, d byte, bits int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{a, b, c, d}), bits)
	}
	v6 := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	f := storeFixture{offences: map[netip.Prefix]store.Offence{}}
	add := func(r store.Rule) {
		f.rules = append(f.rules, r)
		if r.Offences > 0 {
			f.offences[r.Prefix] = store.Offence{Count: r.Offences, Last: r.LastOffence}
		}
	}

	// Imports: runs of rules sharing one value (reason, creation, deadline), as an import writes
	// them, permanent and timed lists alternating.
	for i := range 2400 {
		list := i / 300
		r := store.Rule{Prefix: v4(198, 18, byte(i/200), byte(1+i%200), 32), Origin: api.OriginImport,
			Reason: fmt.Sprintf("import blocklist-%d.txt", list), Created: created.Add(time.Duration(list) * time.Hour)}
		if list%2 == 1 {
			r.Deadline = far.Add(time.Duration(list) * 24 * time.Hour)
		}
		add(r)
	}
	for i := range 200 {
		add(store.Rule{Prefix: v6(fmt.Sprintf("2001:db8:3::%x/128", i+1)), Origin: api.OriginImport,
			Reason: "import feed-v6 — Übersee", Created: created, Deadline: far.Add(90 * 24 * time.Hour)})
	}
	for i := range 20 {
		add(store.Rule{Prefix: v4(198, 19, byte(200+i), 0, 24), Origin: api.OriginImport,
			Reason: "import cidrs.txt", Created: created.Add(time.Minute)})
	}

	// Manual blocks between the imported ones: reasons in several scripts, one at the longest
	// allowed length, permanent and timed, with escalation histories.
	reasons := []string{"scanner from ticket #4821", "brute force — ssh", "Überprüfung: Port-Scan", "扫描器 (端口扫描)",
		"🚫 spam source 🚫", "сканер портов", "manual", strings.Repeat("é", input.MaxReasonLen/2)}
	for i := range 192 {
		when := created.Add(time.Duration(i)*time.Minute + 123*time.Millisecond)
		r := store.Rule{Prefix: v4(198, 18, byte(i/16), byte(201+i%16), 32), Origin: api.OriginManual,
			Reason: reasons[i%len(reasons)], Created: when, Offences: 1 + i%5, LastOffence: when.Add(time.Duration(i%5) * time.Hour)}
		if i%2 == 1 {
			r.Deadline = far.Add(time.Duration(i) * time.Hour)
		}
		add(r)
	}
	for i := range 50 {
		add(store.Rule{Prefix: v4(198, 19, byte(i), 0, 24), Origin: api.OriginManual, Reason: reasons[i%len(reasons)],
			Created: created.Add(time.Duration(i) * time.Second), Offences: 1, LastOffence: created.Add(time.Duration(i) * time.Second)})
	}
	add(store.Rule{Prefix: v4(198, 19, 64, 0, 20), Origin: api.OriginManual, Reason: "a /20 by hand", Created: created,
		Deadline: far, Offences: 2, LastOffence: created.Add(time.Hour)})
	add(store.Rule{Prefix: v4(198, 19, 128, 16, 28), Origin: api.OriginManual, Reason: "a /28", Created: created,
		Offences: 1, LastOffence: created})
	add(store.Rule{Prefix: v6("2001:db8:f000::/48"), Origin: api.OriginManual, Reason: "a /48 — permanent",
		Created: created, Offences: 1, LastOffence: created})
	add(store.Rule{Prefix: v6("2001:db8:2::1/128"), Origin: api.OriginManual, Reason: "one IPv6 address",
		Created: created, Deadline: far.Add(time.Minute), Offences: 3, LastOffence: created.Add(2 * time.Hour)})

	// Trap blocks, IPv4 single addresses and IPv6 /64s, escalated.
	for i := range 100 {
		when := created.Add(time.Duration(i) * time.Second)
		add(store.Rule{Prefix: v4(198, 18, 100, byte(1+i), 32), Origin: api.OriginTrap,
			Reason: "trap: tcp/1,111,31337 SYN", Created: when, Deadline: far.Add(time.Duration(i) * time.Second),
			Offences: 1 + i%4, LastOffence: when})
	}
	for i := range 150 {
		when := created.Add(time.Duration(i) * time.Second)
		add(store.Rule{Prefix: v6(fmt.Sprintf("2001:db8:1:%x::/64", i)), Origin: api.OriginTrap,
			Reason: "trap: udp/161 (IPv6)", Created: when, Deadline: far.Add(time.Duration(i) * time.Minute),
			Offences: 1 + i%3, LastOffence: when})
	}

	// The rule whose deadline passed before the fixture was written.
	f.expired = v4(198, 18, 250, 250, 32)
	add(store.Rule{Prefix: f.expired, Origin: api.OriginTrap, Reason: "trap: tcp/23 SYN — expired",
		Created: at("2024-12-01T00:00:00Z"), Deadline: at("2025-01-01T00:00:00Z"), Offences: 1,
		LastOffence: at("2024-12-01T00:00:00Z")})

	// Histories that outlived their blocks.
	for i := range 20 {
		f.offences[v4(198, 18, 240, byte(i), 32)] = store.Offence{Count: 1 + i, Last: created.Add(-time.Duration(i) * time.Hour)}
	}
	f.offences[v6("2001:db8:9::/64")] = store.Offence{Count: 7, Last: created}

	f.allow = []store.AllowRecord{
		{Prefix: v4(198, 18, 254, 0, 24), Created: created},
		{Prefix: v4(198, 18, 253, 7, 32), Created: created.Add(time.Second)},
		{Prefix: v4(198, 19, 255, 0, 28), Created: created.Add(2 * time.Second)},
		{Prefix: v6("2001:db8:aaaa::/48"), Created: created.Add(3 * time.Second)},
		{Prefix: v6("2001:db8:bbbb::1/128"), Created: created.Add(4 * time.Second)},
	}
	slices.SortFunc(f.rules, func(a, b store.Rule) int { return a.Prefix.Compare(b.Prefix) })
	slices.SortFunc(f.allow, func(a, b store.AllowRecord) int { return a.Prefix.Compare(b.Prefix) })
	return f
}

// TestWriteStoreFixture writes the fixture store: the imports in one bulk write, the other rules
// one by one into the same segments, then histories and allowlist, as snared writes them.
func TestWriteStoreFixture(t *testing.T) {
	if os.Getenv("SNARE_WRITE_FIXTURE") != "1" {
		t.Skip("set SNARE_WRITE_FIXTURE=1 to rewrite " + storeFixturePath)
	}
	f := fixtureContent()
	path := filepath.Join(t.TempDir(), "snare.db")
	st, err := store.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var imports, others []store.Rule
	for _, r := range f.rules {
		if r.Origin == api.OriginImport {
			imports = append(imports, r)
		} else {
			others = append(others, r)
		}
	}
	if err := st.BulkPutRules(len(imports), func(i int) store.Rule { return imports[i] }, nil, nil); err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		for _, r := range others {
			if err := tx.PutRule(r); err != nil {
				return err
			}
		}
		for p, o := range f.offences {
			if err := tx.PutOffence(p, o); err != nil {
				return err
			}
		}
		for _, a := range f.allow {
			if err := tx.PutAllow(a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// The fixture is only worth keeping if its rules span many segments and pages.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var stats bolt.BucketStats
	err = db.View(func(tx *bolt.Tx) error { stats = tx.Bucket([]byte("rules")).Stats(); return nil })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rules bucket: %d segments on %d leaf and %d branch pages", stats.KeyN, stats.LeafPageN, stats.BranchPageN)
	if stats.KeyN < 10 || stats.LeafPageN < 5 {
		t.Fatalf("the rules span %d segments on %d pages: too few to be worth a fixture", stats.KeyN, stats.LeafPageN)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storeFixturePath, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: %d rules, %d bytes (%d gzipped)", storeFixturePath, len(f.rules), len(b), gz.Len())
}

// TestStoreFixtureOpens: the store written by the release that made the fixture opens, and
// every rule, history and allowlist entry reads back as written; a daemon opened on it puts
// exactly the unexpired rules into the enforcer and drops the expired one.
func TestStoreFixtureOpens(t *testing.T) {
	f := fixtureContent()
	dir := t.TempDir()
	gz, err := os.Open(storeFixturePath)
	if err != nil {
		t.Fatal(err)
	}
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("read %s: %v", storeFixturePath, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "snare.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}

	st, err := store.OpenStore(filepath.Join(dir, "snare.db"))
	if err != nil {
		t.Fatalf("open the fixture store: %v", err)
	}
	var v4, v6 int
	for _, r := range f.rules {
		if r.Prefix.Addr().Is6() {
			v6++
		} else {
			v4++
		}
	}
	if got4, got6 := st.CountFamily(false), st.CountFamily(true); got4 != v4 || got6 != v6 {
		t.Errorf("counts IPv4 %d, IPv6 %d; want %d, %d", got4, got6, v4, v6)
	}
	err = st.View(func(tx *store.Tx) error {
		var got []store.Rule
		if err := tx.ForEachRule(func(r store.Rule) error { got = append(got, r); return nil }); err != nil {
			return err
		}
		if len(got) != len(f.rules) {
			t.Errorf("the store holds %d rules, want %d", len(got), len(f.rules))
		}
		for i := range min(len(got), len(f.rules)) {
			if diff := ruleDiff(got[i], f.rules[i]); diff != "" {
				t.Errorf("rule %d: %s", i, diff)
			}
		}
		// Looked up one by one, too: that reads a segment from its middle.
		for _, want := range f.rules {
			r, ok, err := tx.Rule(want.Prefix)
			if err != nil || !ok {
				t.Errorf("rule %s: found %v, %v", want.Prefix, ok, err)
			} else if diff := ruleDiff(r, want); diff != "" {
				t.Errorf("rule %s looked up: %s", want.Prefix, diff)
			}
		}
		// The expired rule stays stored until a sweep (a daemon's start runs one) removes it.
		if r, ok, err := tx.Rule(f.expired); err != nil || !ok || !r.Expired(time.Now()) {
			t.Errorf("the expired rule %s: found %v (%v), expired %v", f.expired, ok, err, r.Expired(time.Now()))
		}
		for p, want := range f.offences {
			if o := tx.Offence(p); o.Count != want.Count || !o.Last.Equal(want.Last) {
				t.Errorf("history of %s: %d, last %s; want %d, last %s", p, o.Count, o.Last, want.Count, want.Last)
			}
		}
		allow, err := tx.Allow()
		if err != nil {
			return err
		}
		if len(allow) != len(f.allow) {
			t.Errorf("allowlist %v, want %v", allow, f.allow)
		}
		for i := range min(len(allow), len(f.allow)) {
			if allow[i].Prefix != f.allow[i].Prefix || !allow[i].Created.Equal(f.allow[i].Created) {
				t.Errorf("allowlist entry %d: %v, want %v", i, allow[i], f.allow[i])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// A daemon on the store: the start's sweep drops the expired rule, the rest go to the
	// enforcer with their deadlines.
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = dir
	enf := &testutil.MemEnforcer{}
	d, err := control.Open(context.Background(), control.Options{Config: cfg,
		OpenEnforcer: func() (backend.Enforcer, string, error) { return enf, "", nil },
		ImplicitAllow: func() (control.Allowlist, error) {
			return control.Allowlist{{Prefix: netip.MustParsePrefix("198.18.252.1/32"), Source: api.AllowOwnAddress}}, nil
		},
		Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if err != nil {
		t.Fatalf("open a daemon on the fixture store: %v", err)
	}
	defer d.Close()
	held := enf.Held()
	if len(held) != len(f.rules)-1 {
		t.Errorf("the enforcer holds %d rules, want %d", len(held), len(f.rules)-1)
	}
	for _, want := range f.rules {
		r, ok := held[want.Prefix]
		switch {
		case want.Prefix == f.expired && ok:
			t.Errorf("the expired rule %s was restored", want.Prefix)
		case want.Prefix != f.expired && !ok:
			t.Errorf("rule %s was not restored", want.Prefix)
		case ok && !r.Deadline.Equal(want.Deadline):
			t.Errorf("rule %s restored with deadline %s, want %s", want.Prefix, r.Deadline, want.Deadline)
		}
	}
	var es []api.Entry
	err = d.EachEntry(context.Background(), func(e *api.Entry) error {
		es = append(es, *e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != len(f.rules)-1 {
		t.Errorf("the daemon lists %d blocks, want %d", len(es), len(f.rules)-1)
	}
	for _, e := range es {
		if e.Prefix == f.expired.String() {
			t.Errorf("the daemon still lists the expired rule %s", e.Prefix)
		}
	}
	allowed := enf.Allowed()
	for _, a := range f.allow {
		if !slices.Contains(allowed, a.Prefix) {
			t.Errorf("the enforcer's allowlist %v lacks %s", allowed, a.Prefix)
		}
	}
	expiredEvent := false
	for _, ev := range d.Events().Recent() {
		expiredEvent = expiredEvent || ev.Event == api.EventExpire && ev.Address == f.expired.String()
	}
	if !expiredEvent {
		t.Errorf("no expire event for %s", f.expired)
	}
}

// ruleDiff describes how got differs from want, field by field ("" if not at all).
func ruleDiff(got, want store.Rule) string {
	var d []string
	if got.Prefix != want.Prefix {
		d = append(d, fmt.Sprintf("prefix %s, want %s", got.Prefix, want.Prefix))
	}
	if got.Reason != want.Reason {
		d = append(d, fmt.Sprintf("reason %q, want %q", got.Reason, want.Reason))
	}
	if got.Origin != want.Origin {
		d = append(d, fmt.Sprintf("origin %q, want %q", got.Origin, want.Origin))
	}
	if !got.Created.Equal(want.Created) {
		d = append(d, fmt.Sprintf("created %s, want %s", got.Created, want.Created))
	}
	if !got.Deadline.Equal(want.Deadline) {
		d = append(d, fmt.Sprintf("deadline %s, want %s", got.Deadline, want.Deadline))
	}
	if got.Offences != want.Offences {
		d = append(d, fmt.Sprintf("offences %d, want %d", got.Offences, want.Offences))
	}
	if !got.LastOffence.Equal(want.LastOffence) {
		d = append(d, fmt.Sprintf("last offence %s, want %s", got.LastOffence, want.LastOffence))
	}
	return strings.Join(d, "; ")
}
