package fallback

import "log/slog"

// Options configure New.
type Options struct {
	Interfaces []string // interfaces whose traffic is filtered (empty: all)
	Capacity   int      // maxelem of each ipset set
	Prefix     string   // name prefix of sets and chains, default "snare"
	Logger     *slog.Logger
}
