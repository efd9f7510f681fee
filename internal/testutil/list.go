package testutil

import (
	"fmt"
	"strings"
)

// BenchList is n distinct block-list lines: IPv4 addresses from 198.18.0.0/15 (128K of them),
// then IPv6 addresses (each its own /64) from 2001:db8::/32.
func BenchList(n int) string {
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
