package control

import (
	"testing"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/input"
)

func TestEscalatedTTL(t *testing.T) {
	day := 24 * time.Hour
	esc := config.EscalationConfig{Enabled: true, Lookback: config.Duration(30 * day), Factor: 2, MaxTTL: config.TTL(90 * day)}
	for _, tc := range []struct {
		name  string
		base  time.Duration
		prior int
		esc   config.EscalationConfig
		want  time.Duration
	}{
		{"first offence", 5 * day, 0, esc, 5 * day},
		{"second", 5 * day, 1, esc, 10 * day},
		{"third", 5 * day, 2, esc, 20 * day},
		{"fifth", 5 * day, 4, esc, 80 * day},
		{"capped", 5 * day, 5, esc, 90 * day},
		{"far past the cap", 5 * day, 500, esc, 90 * day},
		{"permanent stays permanent", 0, 3, esc, 0},
		{"disabled", 5 * day, 3, config.EscalationConfig{Enabled: false, Factor: 2, MaxTTL: config.TTL(90 * day)}, 5 * day},
		{"factor 1", 5 * day, 3, config.EscalationConfig{Enabled: true, Factor: 1, MaxTTL: config.TTL(90 * day)}, 5 * day},
		{"factor 1.5", 4 * time.Hour, 2, config.EscalationConfig{Enabled: true, Factor: 1.5, MaxTTL: config.TTL(90 * day)}, 9 * time.Hour},
		{"no cap (max_ttl permanent)", 5 * day, 3, config.EscalationConfig{Enabled: true, Factor: 2}, 40 * day},
		{"no cap overflows to 100 years", 5 * day, 1000, config.EscalationConfig{Enabled: true, Factor: 2}, input.MaxDuration},
	} {
		if got := EscalatedTTL(tc.base, tc.prior, tc.esc); got != tc.want {
			t.Errorf("%s: EscalatedTTL(%s, %d) = %s, want %s", tc.name, tc.base, tc.prior, got, tc.want)
		}
	}
}

func TestPriorOffences(t *testing.T) {
	now := time.Now()
	esc := config.EscalationConfig{Enabled: true, Lookback: config.Duration(30 * 24 * time.Hour), Factor: 2}
	for _, tc := range []struct {
		o    store.Offence
		want int
	}{
		{store.Offence{}, 0},
		{store.Offence{Count: 3, Last: now.Add(-time.Hour)}, 3},
		{store.Offence{Count: 3, Last: now.Add(-30 * 24 * time.Hour)}, 3},
		{store.Offence{Count: 3, Last: now.Add(-30*24*time.Hour - time.Second)}, 0},
	} {
		if got := priorOffences(tc.o, now, esc); got != tc.want {
			t.Errorf("priorOffences(%+v) = %d, want %d", tc.o, got, tc.want)
		}
	}
}
