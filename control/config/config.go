// Package config is snared's configuration: the embedded defaults, a YAML file, SNARE_*
// environment variables and flags, merged and validated with errors that name the key.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/snare-dev/snare/backend"
)

//go:embed defaults.yaml
var defaultsYAML []byte

// Config is snared's whole configuration. Every key has a default (defaults.yaml), and can be
// set in a YAML file, in the environment as SNARE_<KEY> ('.' → '_', upper case), and the
// top-level ones by flags.
type Config struct {
	Interfaces    []string      `koanf:"interfaces" yaml:"interfaces"`
	Backend       string        `koanf:"backend" yaml:"backend"`
	XDPMode       string        `koanf:"xdp_mode" yaml:"xdp_mode"`
	StateDir      string        `koanf:"state_dir" yaml:"state_dir"`
	Socket        string        `koanf:"socket" yaml:"socket"`
	BPFFS         string        `koanf:"bpffs" yaml:"bpffs"`
	DryRun        bool          `koanf:"dry_run" yaml:"dry_run"`
	Block         BlockConfig   `koanf:"block" yaml:"block"`
	Allow         []string      `koanf:"allow" yaml:"allow"`
	AllowImplicit bool          `koanf:"allow_implicit" yaml:"allow_implicit"`
	Trap          TrapSettings  `koanf:"trap" yaml:"trap"`
	Sweep         SweepConfig   `koanf:"sweep" yaml:"sweep"`
	Metrics       MetricsConfig `koanf:"metrics" yaml:"metrics"`
	EventsFile    string        `koanf:"events_file" yaml:"events_file"`
	Fleet         FleetConfig   `koanf:"fleet" yaml:"fleet"`
}

// BlockConfig is the block.* section.
type BlockConfig struct {
	TTL         TTL              `koanf:"ttl" yaml:"ttl"`
	Capacity    int              `koanf:"capacity" yaml:"capacity"`
	IPv6Prefix  int              `koanf:"ipv6_prefix" yaml:"ipv6_prefix"`
	MinPrefixV4 int              `koanf:"min_prefix_v4" yaml:"min_prefix_v4"`
	MinPrefixV6 int              `koanf:"min_prefix_v6" yaml:"min_prefix_v6"`
	Escalation  EscalationConfig `koanf:"escalation" yaml:"escalation"`
}

// EscalationConfig is block.escalation.*: repeat offenders get longer blocks.
type EscalationConfig struct {
	Enabled  bool     `koanf:"enabled" yaml:"enabled"`
	Lookback Duration `koanf:"lookback" yaml:"lookback"`
	Factor   float64  `koanf:"factor" yaml:"factor"`
	MaxTTL   TTL      `koanf:"max_ttl" yaml:"max_ttl"`
}

// TrapSettings is the trap.* section (backend.TrapConfig is what the enforcer gets from it).
type TrapSettings struct {
	TCPPorts        string   `koanf:"tcp_ports" yaml:"tcp_ports"`
	UDPPorts        string   `koanf:"udp_ports" yaml:"udp_ports"`
	Threshold       int      `koanf:"threshold" yaml:"threshold"`
	Window          Duration `koanf:"window" yaml:"window"`
	TCPMode         string   `koanf:"tcp_mode" yaml:"tcp_mode"`
	UDPMode         string   `koanf:"udp_mode" yaml:"udp_mode"`
	AdvancedBelow   int      `koanf:"advanced_below" yaml:"advanced_below"`
	Exclude         string   `koanf:"exclude" yaml:"exclude"`
	EventsPerSecond int      `koanf:"events_per_second" yaml:"events_per_second"`
	EventBurst      int      `koanf:"event_burst" yaml:"event_burst"`
}

// SweepConfig is the sweep.* section.
type SweepConfig struct {
	Interval Duration `koanf:"interval" yaml:"interval"`
}

// MetricsConfig is the metrics.* section.
type MetricsConfig struct {
	Listen string `koanf:"listen" yaml:"listen"`
}

// EventsPath is where the event log is written.
func (c *Config) EventsPath() string {
	if c.EventsFile != "" {
		return c.EventsFile
	}
	return filepath.Join(c.StateDir, "events.jsonl")
}

// DBPath is the durable store's file.
func (c *Config) DBPath() string { return filepath.Join(c.StateDir, "snare.db") }

// TargetRules are the limits block targets are checked against.
func (c *Config) TargetRules() input.TargetRules {
	return input.TargetRules{IPv6Prefix: c.Block.IPv6Prefix, MinPrefixV4: c.Block.MinPrefixV4, MinPrefixV6: c.Block.MinPrefixV6}
}

// EnforcerTrap is the trap configuration for the enforcer. The config must have been validated.
func (c *Config) EnforcerTrap() backend.TrapConfig {
	tcp, _ := input.ParsePorts(c.Trap.TCPPorts)
	udp, _ := input.ParsePorts(c.Trap.UDPPorts)
	exclude, _ := input.ParsePorts(c.Trap.Exclude)
	drop := func(ports []uint16) []uint16 {
		return slices.DeleteFunc(ports, func(p uint16) bool { return slices.Contains(exclude, p) })
	}
	return backend.TrapConfig{
		TCPPorts:        drop(tcp),
		UDPPorts:        drop(udp),
		Threshold:       c.Trap.Threshold,
		Window:          time.Duration(c.Trap.Window),
		TTL:             time.Duration(c.Block.TTL),
		BlockTCP:        c.Trap.TCPMode == "block",
		BlockUDP:        c.Trap.UDPMode == "block",
		EventsPerSecond: c.Trap.EventsPerSecond,
		EventBurst:      c.Trap.EventBurst,
	}
}

// EnforcerSettings are the enforcer-wide switches from the config.
func (c *Config) EnforcerSettings() backend.Settings {
	return backend.Settings{DryRun: c.DryRun, IPv6Prefix: c.Block.IPv6Prefix}
}

// YAML renders the configuration as YAML (what --print-config and --check-config show).
func (c *Config) YAML() ([]byte, error) {
	return yamlv3.Marshal(c)
}

// Duration is a positive duration in Go syntax ("90s", "12h") that also accepts days ("5d").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := input.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(input.FormatDuration(time.Duration(d))), nil
}

// TTL is a block lifetime: a positive Duration, or 0 for "permanent".
type TTL time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *TTL) UnmarshalText(b []byte) error {
	v, err := input.ParseTTL(string(b))
	if err != nil {
		return err
	}
	*t = TTL(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (t TTL) MarshalText() ([]byte, error) { return []byte(input.FormatTTL(time.Duration(t))), nil }

// flagKeys maps snared's config flags to their keys.
var flagKeys = map[string]string{
	"iface":     "interfaces",
	"backend":   "backend",
	"xdp-mode":  "xdp_mode",
	"state-dir": "state_dir",
	"socket":    "socket",
	"bpffs":     "bpffs",
	"dry-run":   "dry_run",
}

// AddFlags registers the flags that set config keys (those of design.md's command line).
func AddFlags(fs *pflag.FlagSet) {
	fs.StringSlice("iface", nil, "interface to protect (repeatable; default: the default-route interface) [interfaces, SNARE_INTERFACES]")
	fs.String("backend", "auto", "enforcement back-end: auto (XDP, else iptables), xdp or iptables [backend, SNARE_BACKEND]")
	fs.String("xdp-mode", "auto", "XDP attach mode: auto (native, else generic), native or generic [xdp_mode, SNARE_XDP_MODE]")
	fs.String("state-dir", "/var/lib/snare", "directory of the durable store, lock and event log [state_dir, SNARE_STATE_DIR]")
	fs.String("socket", "/run/snare/snare.sock", "Unix socket of the API [socket, SNARE_SOCKET]")
	fs.String("bpffs", "/sys/fs/bpf/snare", "bpffs directory for pinned maps and links [bpffs, SNARE_BPFFS]")
	fs.Bool("dry-run", false, "count what would be dropped but pass it [dry_run, SNARE_DRY_RUN]")
}

// LoadOptions say where Load reads from, lowest precedence first after the defaults.
type LoadOptions struct {
	File string // YAML config file; "" for none. A named file must exist.
	// DropInDir holds more YAML files (*.yaml), merged after File in name order; a missing
	// directory is no error (e.g. /etc/snare/conf.d).
	DropInDir string
	Env       []string       // environment ("KEY=value"), e.g. os.Environ(); only SNARE_* keys are used
	Flags     *pflag.FlagSet // flags registered with AddFlags; only flags set on the command line count
}

// sliceKeys are the list-valued keys; in the environment they are comma or space separated.
var sliceKeys = map[string]bool{"interfaces": true, "allow": true, "fleet.servers": true, "fleet.embedded.routes": true}

// Load merges the embedded defaults, the config file, SNARE_* environment variables and
// flags (in that order of precedence, lowest first) and validates the result.
func Load(o LoadOptions) (*Config, error) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider(defaultsYAML), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("embedded defaults: %w", err)
	}
	known := map[string]bool{}
	envKeys := map[string]string{}
	for _, key := range k.Keys() {
		known[key] = true
		envKeys[EnvName(key)] = key
	}
	origin := map[string]string{}
	for _, key := range k.Keys() {
		origin[key] = "default"
	}

	files := []string{}
	if o.File != "" {
		files = append(files, o.File)
	}
	if o.DropInDir != "" {
		// Drop-ins are optional: a missing directory means none.
		matches, err := filepath.Glob(filepath.Join(o.DropInDir, "*.yaml"))
		if err != nil {
			return nil, fmt.Errorf("config drop-ins %s: %w", o.DropInDir, err)
		}
		sort.Strings(matches)
		files = append(files, matches...)
	}
	for _, name := range files {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(name), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("config file %s: %w", name, cleanYAMLError(err))
		}
		for _, key := range fk.Keys() {
			if !known[key] {
				return nil, fmt.Errorf("config file %s: unknown key %q%s", name, key, suggest(key, known))
			}
			origin[key] = "config file " + name
		}
		// Set (rather than Merge) splits flat keys such as "block.ttl: 12h" into their sections.
		for key, val := range fk.All() {
			if err := k.Set(key, val); err != nil {
				return nil, fmt.Errorf("config file %s: %s: %w", name, key, err)
			}
		}
	}

	if len(o.Env) > 0 {
		ek := koanf.New(".")
		err := ek.Load(env.Provider(".", env.Opt{
			Prefix:      "SNARE_",
			EnvironFunc: func() []string { return o.Env },
			TransformFunc: func(name, value string) (string, any) {
				key, ok := envKeys[name]
				if !ok {
					return "", nil // other SNARE_* variables (e.g. snarectl's) are not ours
				}
				origin[key] = "environment " + name
				if sliceKeys[key] {
					return key, strings.FieldsFunc(value, func(r rune) bool { return r == ',' || r == ' ' })
				}
				return key, value
			},
		}), nil)
		if err != nil {
			return nil, fmt.Errorf("environment: %w", err)
		}
		if err := k.Merge(ek); err != nil {
			return nil, fmt.Errorf("environment: %w", err)
		}
	}

	if o.Flags != nil {
		err := k.Load(posflag.ProviderWithFlag(o.Flags, ".", nil, func(f *pflag.Flag) (string, any) {
			key, ok := flagKeys[f.Name]
			if !ok || !f.Changed {
				return "", nil
			}
			origin[key] = "flag --" + f.Name
			return key, posflag.FlagVal(o.Flags, f)
		}), nil)
		if err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
	}

	var c Config
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook:       textHook,
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		TagName:          "koanf",
		Result:           &c,
	})
	if err != nil {
		return nil, err
	}
	if err := dec.Decode(k.Raw()); err != nil {
		return nil, decodeError(err, origin)
	}
	if err := c.Validate(); err != nil {
		var ke *keyError
		if errors.As(err, &ke) && origin[ke.key] != "" && origin[ke.key] != "default" {
			return nil, fmt.Errorf("config: %w (set by %s)", err, origin[ke.key])
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return &c, nil
}

// EnvName is the environment variable of a config key: "block.ttl" → "SNARE_BLOCK_TTL".
func EnvName(key string) string {
	return "SNARE_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// textHook turns any scalar into text for the types that parse text (durations, TTLs), so that
// a YAML number such as "window: 60" is rejected for its missing unit instead of read as 60ns.
func textHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(Duration(0)) && to != reflect.TypeOf(TTL(0)) {
		return data, nil
	}
	switch from.Kind() {
	case reflect.Map, reflect.Slice, reflect.Struct:
		return data, nil
	}
	v := reflect.New(to)
	if err := v.Interface().(interface{ UnmarshalText([]byte) error }).UnmarshalText([]byte(fmt.Sprint(data))); err != nil {
		return nil, err
	}
	return v.Elem().Interface(), nil
}

// decodeError flattens mapstructure's multi-line errors into one message per key, naming
// where the bad value came from.
func decodeError(err error, origin map[string]string) error {
	var msgs []string
	var walk func(error)
	walk = func(e error) {
		if de, ok := e.(*mapstructure.DecodeError); ok && de.Unwrap() != nil {
			key := strings.ToLower(de.Name())
			m := key + ": " + de.Unwrap().Error()
			var pe *mapstructure.ParseError
			if errors.As(de.Unwrap(), &pe) {
				m = fmt.Sprintf("%s: %q is not a valid %s", key, fmt.Sprint(pe.Value), pe.Expected.Type())
			}
			if src := origin[key]; src != "" && src != "default" {
				m += " (set by " + src + ")"
			}
			msgs = append(msgs, m)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if u := errors.Unwrap(e); u != nil {
			walk(u)
			return
		}
		msgs = append(msgs, e.Error())
	}
	walk(err)
	sort.Strings(msgs)
	return fmt.Errorf("config: %s", strings.Join(msgs, "; "))
}

// cleanYAMLError keeps the parser's line number and drops koanf's wrapping.
func cleanYAMLError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("file does not exist")
	}
	return err
}

// suggest names a known key that ends like the unknown one, for typos of the section.
func suggest(key string, known map[string]bool) string {
	last := key[strings.LastIndex(key, ".")+1:]
	var hits []string
	for k := range known {
		if strings.HasSuffix(k, "."+last) || k == last {
			hits = append(hits, k)
		}
	}
	if len(hits) == 0 {
		return ""
	}
	sort.Strings(hits)
	return fmt.Sprintf(" (did you mean %s?)", strings.Join(hits, " or "))
}
