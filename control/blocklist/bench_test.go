package blocklist

import (
	"testing"
	"time"

	"github.com/snare-dev/snare/internal/testutil"
)

func BenchmarkParse1M(b *testing.B) {
	list := testutil.BenchList(1_000_000)
	b.ResetTimer()
	for range b.N {
		good, _, bad := parseAll(list, defaultRules, time.Now())
		if bad != 0 || len(good) != 1_000_000 {
			b.Fatalf("%d good, %d bad", len(good), bad)
		}
	}
}
