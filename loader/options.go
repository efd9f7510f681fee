package loader

import (
	"errors"
	"log/slog"
)

// Options configure Open.
type Options struct {
	Interfaces []string // interfaces to attach to (at least one)
	Mode       string   // "auto" (native, else generic), "native" or "generic"
	PinDir     string   // bpffs directory for pins, e.g. /sys/fs/bpf/snare
	Capacity   int      // block entries the maps must hold (v4 and v6 each)
	Logger     *slog.Logger
}

// ErrLocked is returned by Open when another daemon holds the pin directory.
var ErrLocked = errors.New("pin directory is locked by another snared")

// ErrNewerABI is returned by Open when the pinned maps were made by a newer snare. It is no
// reason to fall back to another back-end: that snare's program stays attached to those maps.
var ErrNewerABI = errors.New("made by a newer snare")
