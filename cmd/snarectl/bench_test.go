package main

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkCheckBlockList measures the client-side check of a 1,000,000-line blocked.list,
// which every import pays while the file is sent.
func BenchmarkCheckBlockList(b *testing.B) {
	var buf bytes.Buffer
	for i := range 1_000_000 {
		fmt.Fprintf(&buf, "198.%d.%d.%d 20261120\n", 18+i>>16%2, i>>8&255, i&255)
	}
	data := buf.Bytes()
	for b.Loop() {
		if bad, err := checkBlockList(bytes.NewReader(data), testNow); err != nil || len(bad) != 0 {
			b.Fatalf("bad lines %v, err %v", bad[:min(len(bad), 3)], err)
		}
	}
}
