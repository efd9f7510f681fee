package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("snared", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestConfigDefaults(t *testing.T) {
	c, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"backend", c.Backend, "auto"},
		{"xdp_mode", c.XDPMode, "auto"},
		{"state_dir", c.StateDir, "/var/lib/snare"},
		{"socket", c.Socket, "/run/snare/snare.sock"},
		{"bpffs", c.BPFFS, "/sys/fs/bpf/snare"},
		{"interfaces", len(c.Interfaces), 0},
		{"block.ttl", time.Duration(c.Block.TTL), 5 * 24 * time.Hour},
		{"block.capacity", c.Block.Capacity, 1000000},
		{"block.ipv6_prefix", c.Block.IPv6Prefix, 64},
		{"block.min_prefix_v4", c.Block.MinPrefixV4, 8},
		{"block.min_prefix_v6", c.Block.MinPrefixV6, 32},
		{"block.escalation.enabled", c.Block.Escalation.Enabled, true},
		{"block.escalation.lookback", time.Duration(c.Block.Escalation.Lookback), 30 * 24 * time.Hour},
		{"block.escalation.factor", c.Block.Escalation.Factor, 2.0},
		{"block.escalation.max_ttl", time.Duration(c.Block.Escalation.MaxTTL), 90 * 24 * time.Hour},
		{"allow_implicit", c.AllowImplicit, true},
		{"trap.threshold", c.Trap.Threshold, 1},
		{"trap.window", time.Duration(c.Trap.Window), time.Minute},
		{"trap.tcp_mode", c.Trap.TCPMode, "block"},
		{"trap.udp_mode", c.Trap.UDPMode, "block"},
		{"trap.events_per_second", c.Trap.EventsPerSecond, 200},
		{"trap.event_burst", c.Trap.EventBurst, 500},
		{"sweep.interval", time.Duration(c.Sweep.Interval), 10 * time.Second},
		{"metrics.listen", c.Metrics.Listen, "127.0.0.1:9477"},
		{"events path", c.EventsPath(), "/var/lib/snare/events.jsonl"},
		{"db path", c.DBPath(), "/var/lib/snare/snare.db"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	trap := c.EnforcerTrap()
	if got := input.FormatPorts(trap.TCPPorts); got != c.Trap.TCPPorts {
		t.Errorf("tcp trap ports %s, want %s", got, c.Trap.TCPPorts)
	}
	if len(trap.UDPPorts) != 13 || !trap.BlockTCP || !trap.BlockUDP || trap.TTL != 5*24*time.Hour {
		t.Errorf("enforcer trap config %+v", trap)
	}
	// Linux's default ephemeral range: replies to the host's own clients arrive there.
	for _, p := range append(trap.TCPPorts, trap.UDPPorts...) {
		if p >= 32768 && p <= 60999 {
			t.Errorf("default trap port %d lies inside the default ephemeral range 32768-60999", p)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "snare.yaml", `
backend: iptables
state_dir: /file/state
socket: /file/sock
block:
  ttl: 12h
trap:
  threshold: 3
  tcp_mode: log
interfaces: [eth9]
`)
	env := []string{
		"SNARE_STATE_DIR=/env/state",
		"SNARE_SOCKET=/env/sock",
		"SNARE_BLOCK_MIN_PREFIX_V4=16",
		"SNARE_TRAP_THRESHOLD=4",
		"SNARE_ALLOW=198.18.5.0/24, 2001:db8::1",
		"SNARE_UNRELATED=whatever", // other SNARE_* variables are ignored
		"PATH=/bin",
	}
	fs := flags(t, "--socket", "/flag/sock", "--iface", "veth1", "--iface", "veth2", "--dry-run")
	c, err := Load(LoadOptions{File: file, Env: env, Flags: fs})
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != "iptables" { // file only
		t.Errorf("backend %q", c.Backend)
	}
	if time.Duration(c.Block.TTL) != 12*time.Hour { // file only
		t.Errorf("ttl %v", c.Block.TTL)
	}
	if c.Trap.TCPMode != "log" || c.Trap.UDPMode != "block" {
		t.Errorf("modes %q %q", c.Trap.TCPMode, c.Trap.UDPMode)
	}
	if c.StateDir != "/env/state" { // env over file
		t.Errorf("state_dir %q", c.StateDir)
	}
	if c.Trap.Threshold != 4 || c.Block.MinPrefixV4 != 16 {
		t.Errorf("threshold %d min_prefix_v4 %d", c.Trap.Threshold, c.Block.MinPrefixV4)
	}
	if strings.Join(c.Allow, "|") != "198.18.5.0/24|2001:db8::1" {
		t.Errorf("allow %q", c.Allow)
	}
	if c.Socket != "/flag/sock" { // flag over env over file
		t.Errorf("socket %q", c.Socket)
	}
	if strings.Join(c.Interfaces, ",") != "veth1,veth2" || !c.DryRun {
		t.Errorf("interfaces %q dry_run %v", c.Interfaces, c.DryRun)
	}
	if c.BPFFS != "/sys/fs/bpf/snare" { // unset flag keeps the default
		t.Errorf("bpffs %q", c.BPFFS)
	}
}

func TestConfigFlatKeysInFile(t *testing.T) {
	file := writeFile(t, "snare.yaml", "block.ttl: permanent\nsweep.interval: 1s\n")
	c, err := Load(LoadOptions{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if c.Block.TTL != 0 || time.Duration(c.Sweep.Interval) != time.Second {
		t.Errorf("ttl %v interval %v", c.Block.TTL, c.Sweep.Interval)
	}
}

func TestConfigYAMLRoundTrip(t *testing.T) {
	c, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ttl: 5d", "max_ttl: 90d", "window: 1m", "backend: auto"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("printed config lacks %q:\n%s", want, out)
		}
	}
	// What --print-config prints loads back to the same
	again, err := Load(LoadOptions{File: writeFile(t, "printed.yaml", string(out))})
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out)
	}
	out2, _ := again.YAML()
	if string(out) != string(out2) {
		t.Errorf("round trip differs:\n%s\n---\n%s", out, out2)
	}
}

func TestConfigBadFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(LoadOptions{File: missing})
	wantErr(t, err, missing, "does not exist")

	broken := writeFile(t, "broken.yaml", "backend: xdp\nblock:\n  ttl: 5d\n    capacity: 3\n")
	_, err = Load(LoadOptions{File: broken})
	wantErr(t, err, broken, "line 4")

	unknown := writeFile(t, "unknown.yaml", "block:\n  tll: 5d\n")
	_, err = Load(LoadOptions{File: unknown})
	wantErr(t, err, unknown, `unknown key "block.tll"`)

	typo := writeFile(t, "typo.yaml", "threshold: 3\n")
	_, err = Load(LoadOptions{File: typo})
	wantErr(t, err, `unknown key "threshold"`, "trap.threshold")
}

func TestConfigBadValues(t *testing.T) {
	cases := []struct {
		yaml string
		want []string
	}{
		{"backend: ebpf", []string{"backend", `"ebpf" is not one of auto, xdp, iptables`}},
		{"xdp_mode: fast", []string{"xdp_mode", `"fast"`}},
		{"state_dir: ''", []string{"state_dir", "must not be empty"}},
		{"socket: ' '", []string{"socket", "must not be empty"}},
		{"interfaces: ['eth0/1']", []string{"interfaces", "not a valid interface name"}},
		{"block: {ttl: 5x}", []string{"block.ttl", `bad TTL "5x"`}},
		{"block: {ttl: -5d}", []string{"block.ttl", `bad TTL "-5d"`}},
		{"block: {ttl: 0s}", []string{"block.ttl", `bad TTL "0s"`}},
		{"block: {ttl: 300}", []string{"block.ttl", `bad TTL "300"`}},
		{"block: {capacity: 0}", []string{"block.capacity", "0 is outside 1..100000000"}},
		{"block: {capacity: many}", []string{"block.capacity", "many"}},
		{"block: {ipv6_prefix: 129}", []string{"block.ipv6_prefix", "129 is outside 32..128"}},
		{"block: {ipv6_prefix: 16}", []string{"block.ipv6_prefix", "16 is outside 32..128"}},
		{"block: {min_prefix_v4: 33}", []string{"block.min_prefix_v4", "33 is outside 1..32"}},
		{"block: {min_prefix_v4: 0}", []string{"block.min_prefix_v4", "0 is outside 1..32"}},
		{"block: {min_prefix_v6: 0}", []string{"block.min_prefix_v6"}},
		{"block: {escalation: {factor: 0.5}}", []string{"block.escalation.factor", "0.5 is outside 1..1000"}},
		{"block: {escalation: {lookback: forever}}", []string{"block.escalation.lookback", "forever"}},
		{"block: {escalation: {max_ttl: 1h}}", []string{"block.escalation.max_ttl", "1h is shorter than block.ttl 5d"}},
		{"block: {escalation: {enabled: maybe}}", []string{"block.escalation.enabled", "maybe"}},
		{"allow: [not-an-ip]", []string{"allow", `"not-an-ip" is not an IP address`}},
		{"allow: ['0.0.0.0/0']", []string{"allow", "every IPv4 address"}},
		{"trap: {tcp_ports: '1,2,x'}", []string{"trap.tcp_ports", `"x": not a port number`}},
		{"trap: {udp_ports: '0'}", []string{"trap.udp_ports", "port 0 out of range"}},
		{"trap: {udp_ports: '70000'}", []string{"trap.udp_ports", "port 70000 out of range"}},
		{"trap: {tcp_ports: '20-10'}", []string{"trap.tcp_ports", "reversed"}},
		{"trap: {exclude: '1-'}", []string{"trap.exclude", "not a port number"}},
		{"trap: {threshold: 0}", []string{"trap.threshold", "0 is outside 1..16"}},
		{"trap: {threshold: 17}", []string{"trap.threshold", "17 is outside 1..16"}},
		{"trap: {window: 60}", []string{"trap.window", `"60"`}},
		{"trap: {window: permanent}", []string{"trap.window", `"permanent"`}},
		{"trap: {tcp_mode: drop}", []string{"trap.tcp_mode", `"drop" is not one of block, log`}},
		{"trap: {udp_mode: ''}", []string{"trap.udp_mode"}},
		{"trap: {advanced_below: 70000}", []string{"trap.advanced_below"}},
		{"trap: {events_per_second: 0}", []string{"trap.events_per_second"}},
		{"trap: {event_burst: -1}", []string{"trap.event_burst"}},
		{"sweep: {interval: 0s}", []string{"sweep.interval", "zero"}},
		{"metrics: {listen: 'localhost'}", []string{"metrics.listen", "host:port"}},
		{"metrics: {listen: '127.0.0.1:99999'}", []string{"metrics.listen", "out of range"}},
	}
	for _, tc := range cases {
		t.Run(tc.yaml, func(t *testing.T) {
			file := writeFile(t, "bad.yaml", tc.yaml+"\n")
			_, err := Load(LoadOptions{File: file})
			wantErr(t, err, append(tc.want, file)...)
		})
	}
}

func TestConfigBadEnvAndFlags(t *testing.T) {
	_, err := Load(LoadOptions{Env: []string{"SNARE_BLOCK_TTL=soon"}})
	wantErr(t, err, "block.ttl", `bad TTL "soon"`, "environment SNARE_BLOCK_TTL")

	_, err = Load(LoadOptions{Env: []string{"SNARE_TRAP_THRESHOLD=99"}})
	wantErr(t, err, "trap.threshold", "99 is outside 1..16", "environment SNARE_TRAP_THRESHOLD")

	_, err = Load(LoadOptions{Env: []string{"SNARE_BLOCK_CAPACITY=lots"}})
	wantErr(t, err, "block.capacity", "lots", "SNARE_BLOCK_CAPACITY")

	_, err = Load(LoadOptions{Flags: flags(t, "--backend", "nft")})
	wantErr(t, err, "backend", `"nft"`, "flag --backend")

	_, err = Load(LoadOptions{Flags: flags(t, "--xdp-mode", "turbo")})
	wantErr(t, err, "xdp_mode", "flag --xdp-mode")

	fs := pflag.NewFlagSet("snared", pflag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	AddFlags(fs)
	if err := fs.Parse([]string{"--no-such-flag"}); err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("unknown flag: %v", err)
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestConfigDropIns(t *testing.T) {
	main := writeFile(t, "snare.yaml", "block:\n  ttl: 12h\ntrap:\n  threshold: 2\n")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "20-b.yaml"), []byte("trap:\n  threshold: 3\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "10-a.yaml"), []byte("block.ttl: 1h\ntrap:\n  threshold: 5\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "README"), []byte("not yaml: ["), 0o644)
	c, err := Load(LoadOptions{File: main, DropInDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Block.TTL) != time.Hour || c.Trap.Threshold != 3 {
		t.Errorf("ttl %s threshold %d: want the drop-ins applied in name order (1h, 3)", time.Duration(c.Block.TTL), c.Trap.Threshold)
	}
	if _, err := Load(LoadOptions{DropInDir: filepath.Join(dir, "missing")}); err != nil {
		t.Errorf("a missing drop-in directory: %v", err)
	}
	bad := filepath.Join(dir, "30-bad.yaml")
	os.WriteFile(bad, []byte("trap:\n  treshold: 3\n"), 0o644)
	if _, err := Load(LoadOptions{DropInDir: dir}); err == nil || !strings.Contains(err.Error(), "30-bad.yaml") {
		t.Errorf("bad drop-in: %v, want an error naming the file", err)
	}
}
