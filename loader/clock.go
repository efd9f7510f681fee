package loader

import (
	"time"

	"golang.org/x/sys/unix"
)

// permanent is the kernel deadline of a block that never expires (DEADLINE_PERMANENT in snare.h).
// It is written out here because bpf2go cannot carry it: clang 14 writes a 64-bit enum value into
// BTF truncated to 32 bits, so snare.h keeps it a #define.
const permanent = ^uint64(0)

// clock converts between wall-clock deadlines (what the store keeps, so they hold across
// reboots) and CLOCK_MONOTONIC nanoseconds (what the XDP program compares with
// bpf_ktime_get_coarse_ns, which reads the same clock at tick resolution).
type clock struct {
	wall time.Time
	mono uint64
}

func now() clock {
	var ts unix.Timespec
	// CLOCK_MONOTONIC cannot fail on Linux.
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return clock{wall: time.Now(), mono: uint64(ts.Nano())}
}

// toKernel returns the kernel deadline for a wall-clock deadline; zero means permanent. A deadline
// already past maps to 1, which every clock reading has passed.
func (c clock) toKernel(deadline time.Time) uint64 {
	if deadline.IsZero() {
		return permanent
	}
	d := deadline.Sub(c.wall)
	if d <= 0 {
		return 1
	}
	return c.mono + uint64(d)
}

// toWall is the inverse of toKernel; kernel 0 (never) maps to the zero time.
func (c clock) toWall(k uint64) time.Time {
	if k == permanent || k == 0 {
		return time.Time{}
	}
	return c.wall.Add(time.Duration(int64(k) - int64(c.mono))).Round(time.Millisecond)
}
