package main

import "golang.org/x/sys/unix"

// monoNow is CLOCK_MONOTONIC in ns, the clock the XDP programs compare deadlines with.
func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
