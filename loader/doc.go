// Package loader loads snare's XDP program, attaches it (native, falling back to generic), pins
// program link and maps under bpffs so enforcement outlives the daemon, and gives typed access to
// the maps: block, unblock, iterate, sweep, counters and the trap-event reader. *XDP implements
// backend.Enforcer.
package loader
