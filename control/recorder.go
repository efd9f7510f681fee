package control

import (
	"time"

	"github.com/snare-dev/snare/backend"
)

// Recorder receives the daemon's events that metrics count. The daemon calls it at every block,
// unblock, expiry, eviction repair and sweep; the Prometheus collector (control/metrics)
// implements it. Methods must be cheap and safe for concurrent use.
type Recorder interface {
	// Blocked counts n blocks made by origin ("manual", "trap", "import").
	Blocked(origin string, n int)
	// Unblocked counts n blocks removed by hand.
	Unblocked(n int)
	// Expired counts n blocks the sweeper removed at their deadline.
	Expired(n int)
	// Evicted counts n blocks found missing from the kernel and re-inserted.
	Evicted(n int)
	// SweepDuration records how long one sweep (expiry plus reconcile) took.
	SweepDuration(d time.Duration)
	// StoreSize reports the durable store's file size in bytes after a sweep.
	StoreSize(bytes int64)
	// TrapEvent is called for every trap event the enforcer delivers (trap hits by port).
	TrapEvent(ev backend.TrapEvent)
}

// NopRecorder records nothing; it is the default when no metrics are configured.
type NopRecorder struct{}

func (NopRecorder) Blocked(string, int)         {}
func (NopRecorder) Unblocked(int)               {}
func (NopRecorder) Expired(int)                 {}
func (NopRecorder) Evicted(int)                 {}
func (NopRecorder) SweepDuration(time.Duration) {}
func (NopRecorder) StoreSize(int64)             {}
func (NopRecorder) TrapEvent(backend.TrapEvent) {}
