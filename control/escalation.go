package control

import (
	"math"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/input"
)

// priorOffences is how many earlier offences count towards escalation at now: the history's
// count if its last offence lies within the lookback, else none (the source has been quiet long
// enough to start over).
func priorOffences(o store.Offence, now time.Time, esc config.EscalationConfig) int {
	if o.Count <= 0 || o.Last.IsZero() || now.Sub(o.Last) > time.Duration(esc.Lookback) {
		return 0
	}
	return o.Count
}

// EscalatedTTL is the TTL of a block of a source with prior earlier offences within the
// lookback: base * factor^prior, capped at max_ttl (and at 100 years when max_ttl is
// "permanent", meaning no cap). A permanent base (0) stays permanent; with escalation disabled
// the base is returned unchanged.
func EscalatedTTL(base time.Duration, prior int, esc config.EscalationConfig) time.Duration {
	if base == 0 || !esc.Enabled || prior <= 0 || esc.Factor <= 1 {
		return base
	}
	limit := input.MaxDuration
	if esc.MaxTTL != 0 {
		limit = time.Duration(esc.MaxTTL)
	}
	f := float64(base) * math.Pow(esc.Factor, float64(prior))
	if math.IsInf(f, 0) || math.IsNaN(f) || f >= float64(limit) {
		return max(limit, base)
	}
	return time.Duration(f)
}
