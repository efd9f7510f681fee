package blocklist

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchList is n lines: 128K IPv4 addresses, then IPv6 ones.
func benchList(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i < 1<<17 {
			fmt.Fprintf(&b, "198.%d.%d.%d\n", 18+i>>16, i>>8&255, i&255)
		} else {
			fmt.Fprintf(&b, "2001:db8:%x:%x::1\n", i>>16, i&0xffff)
		}
	}
	return b.String()
}

func BenchmarkParse1M(b *testing.B) {
	list := benchList(1_000_000)
	b.ResetTimer()
	for range b.N {
		good, _, bad := parseAll(list, defaultRules, time.Now())
		if bad != 0 || len(good) != 1_000_000 {
			b.Fatalf("%d good, %d bad", len(good), bad)
		}
	}
}
