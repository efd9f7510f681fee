package testutil

import (
	"bytes"
	"os"
	"testing"
)

// bbolt's page header: id (8 bytes), flags (2), count (2), overflow (4). Its page size is the OS
// page size, as snare opens its stores.
const (
	pageFlagsOffset  = 8
	leafPageFlag     = 0x02
	freelistPageFlag = 0x10
)

// DamageStorePage overwrites, with a fixed junk pattern, the first leaf page of the bbolt file at
// path whose bytes contain needle (an encoded key), as a failing disk or a stray write would, and
// returns its number. It fails the test if no leaf page holds needle.
func DamageStorePage(tb testing.TB, path string, needle []byte) int {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	ps := os.Getpagesize()
	for pg := 2; (pg+1)*ps <= len(data); pg++ {
		page := data[pg*ps : (pg+1)*ps]
		if page[pageFlagsOffset] == leafPageFlag && bytes.Contains(page, needle) {
			overwrite(tb, path, int64(pg*ps), ps)
			return pg
		}
	}
	tb.Fatalf("no leaf page of %s holds %x", path, needle)
	return 0
}

// DamageStoreFreelist overwrites every freelist page of the bbolt file at path (the one in use,
// and any older one not yet reused).
func DamageStoreFreelist(tb testing.TB, path string) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	ps := os.Getpagesize()
	n := 0
	for pg := 2; (pg+1)*ps <= len(data); pg++ {
		if data[pg*ps+pageFlagsOffset] == freelistPageFlag {
			overwrite(tb, path, int64(pg*ps), ps)
			n++
		}
	}
	if n == 0 {
		tb.Fatalf("no freelist page in %s", path)
	}
}

// DamageStoreMeta overwrites both meta pages (pages 0 and 1) of the bbolt file at path.
func DamageStoreMeta(tb testing.TB, path string) {
	tb.Helper()
	ps := os.Getpagesize()
	// The meta after the page header: magic, version, page size, root, freelist, high water
	// mark, txid, checksum.
	for pg := range 2 {
		overwrite(tb, path, int64(pg*ps+16), 64)
	}
}

func overwrite(tb testing.TB, path string, off int64, n int) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = f.WriteAt(bytes.Repeat([]byte{0xA5}, n), off)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
}
