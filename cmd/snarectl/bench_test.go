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
		if errs, bad, err := checkBlockList(bytes.NewReader(data), testNow); err != nil || bad != 0 {
			b.Fatalf("%d bad lines (%v), err %v", bad, errs[:min(len(errs), 3)], err)
		}
	}
}
