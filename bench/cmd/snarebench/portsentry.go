package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/internal/netlab"

	"github.com/gopacket/gopacket/layers"
)

// nflogGroup is the NFLOG group of the rule that logs, after portsentry's DROP rules, what
// passed the host's INPUT chain. (tcpdump on the veth would see packets iptables drops later.)
const nflogGroup = "7"

// fetchPortsentry downloads the Debian package portsentry into dir and extracts it there
// without installing it (its postinst would start the daemon on the real host). It returns the
// path of the extracted binary.
func fetchPortsentry(dir string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", "download", "portsentry")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download portsentry: %w: %s", err, tail(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "portsentry_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get download portsentry: no .deb in %s", dir)
	}
	root := filepath.Join(dir, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[0], err, tail(string(out)))
	}
	bin := filepath.Join(root, "usr/sbin/portsentry")
	if _, err := os.Stat(bin); err != nil {
		return "", err
	}
	return bin, nil
}

// portsentryConf is the seed's setup: the same trap ports as snare, the first hit blocks, and
// the block is an iptables DROP rule run by KILL_RUN_CMD (no route, no hosts.deny). The paths
// are under /etc/portsentry, which is the run's own directory (see startPortsentry).
func portsentryConf() (string, error) {
	list := func(s string) (string, error) {
		ports, err := input.ParsePorts(s)
		if err != nil {
			return "", err
		}
		var out []string
		for _, p := range ports {
			out = append(out, strconv.Itoa(int(p)))
		}
		return strings.Join(out, ","), nil
	}
	tcp, err := list(defaultTCPTraps)
	if err != nil {
		return "", err
	}
	udp, err := list(defaultUDPTraps)
	if err != nil {
		return "", err
	}
	return `TCP_PORTS="` + tcp + `"
UDP_PORTS="` + udp + `"
ADVANCED_PORTS_TCP="1024"
ADVANCED_PORTS_UDP="1024"
ADVANCED_EXCLUDE_TCP="113,139"
ADVANCED_EXCLUDE_UDP="520,138,137,67"
IGNORE_FILE="/etc/portsentry/portsentry.ignore"
HISTORY_FILE="/etc/portsentry/portsentry.history"
BLOCKED_FILE="/etc/portsentry/portsentry.blocked"
RESOLVE_HOST="0"
BLOCK_UDP="1"
BLOCK_TCP="1"
KILL_RUN_CMD="/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"
SCAN_TRIGGER="0"
`, nil
}

// startPortsentry starts portsentry (mode -stcp or -sudp) in the lab's host namespace, with a
// fresh configuration in dir. Its configuration path is compiled in (/etc/portsentry), so it
// runs in a mount namespace of its own where /etc is an overlay with dir's files on top; and it
// always forks into the background, so it runs in a PID namespace of its own whose init is a
// bounded sleep: stopping the returned process (unshare --kill-child) ends the daemon and
// anything it started, and nothing else.
func (e *env) startPortsentry(bin, mode, dir string) (*netlab.Proc, error) {
	conf, err := portsentryConf()
	if err != nil {
		return nil, err
	}
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{filepath.Join(upper, "portsentry"), work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	files := map[string]string{"portsentry.conf": conf, "portsentry.ignore": ""}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(upper, "portsentry", name), []byte(text), 0o600); err != nil {
			return nil, err
		}
	}
	script := `mount -t overlay overlay -o lowerdir=/etc,upperdir="$3",workdir="$4" /etc && "$1" "$2" && exec sleep 300`
	p, err := e.lab.Start(e.lab.Host.NS, "unshare", "--pid", "--kill-child", "--mount", "--propagation", "private",
		"sh", "-c", script, "sh", bin, mode, upper, work)
	if err != nil {
		return nil, err
	}
	// Ready once its raw socket exists (protocol 6 or 17 in /proc/net/raw of the namespace).
	proto := "0006"
	if mode == "-sudp" {
		proto = "0011"
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exited, _ := p.Exited(); exited {
			return nil, fmt.Errorf("portsentry %s exited: %s", mode, tail(p.Output()))
		}
		out, err := e.lab.Run(e.lab.Host.NS, "cat", "/proc/net/raw")
		if err == nil && strings.Contains(out, ":"+proto+" ") {
			time.Sleep(200 * time.Millisecond)
			return p, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Stop()
	return nil, fmt.Errorf("portsentry %s did not open its raw socket: %s", mode, tail(p.Output()))
}

// portsentryRows adds the comparison rows: the same scans against portsentry with the seed's
// setup. What reached the host is what passed INPUT (an NFLOG rule after portsentry's DROP rules).
func (e *env) portsentryRows(t *table, scans []scan, ports, dir string, isTrap func(pktKey) bool) {
	name := func(s scan) string { return "portsentry: " + s.name }
	bin, err := fetchPortsentry(dir)
	if err != nil {
		e.log.Warn("portsentry not available", "err", err)
		t.add("portsentry (seed's setup)", "", "", "", "n/a: portsentry not available: "+oneLine(err), "", "-", "")
		return
	}
	for i, s := range scans {
		if s.v6 {
			t.add(name(s), "", "", "", "n/a: portsentry 1.2 has no IPv6", "", "-", "")
			continue
		}
		row, err := e.portsentryScan(bin, s, ports, filepath.Join(dir, fmt.Sprintf("ps%d", i)), isTrap)
		if err != nil {
			e.log.Warn("portsentry scan", "scan", s.name, "err", err)
			t.add(name(s), "", "", "", "n/a: "+oneLine(err), "", "-", "")
			continue
		}
		t.add(append([]string{name(s)}, row...)...)
	}
}

// portsentryScan runs one scan against portsentry and returns the row's cells after the name.
func (e *env) portsentryScan(bin string, s scan, ports, dir string, isTrap func(pktKey) bool) ([]string, error) {
	host := e.lab.Host.NS
	src, dst := e.lab.Attacker().Addr4(), e.lab.HostIface("attacker").Addr4.Addr()
	mode := "-stcp"
	if s.proto == layers.IPProtocolUDP {
		mode = "-sudp"
	}
	nflog := []string{"INPUT", "-s", src.String(), "-j", "NFLOG", "--nflog-group", nflogGroup}
	if _, err := e.lab.Run(host, "iptables", append([]string{"-A"}, nflog...)...); err != nil {
		return nil, err
	}
	defer e.lab.Run(host, "iptables", append([]string{"-D"}, nflog...)...)
	// portsentry's own rules, whether or not it added any.
	defer func() {
		for range 20 {
			if _, err := e.lab.Run(host, "iptables", "-D", "INPUT", "-s", src.String(), "-j", "DROP"); err != nil {
				return
			}
		}
	}()
	p, err := e.startPortsentry(bin, mode, dir)
	if err != nil {
		return nil, err
	}
	res, err := e.captureScan(s, src, dst, ports, dir, "ps", func(path string) (*netlab.Proc, error) {
		return e.startCapture(host, "nflog:"+nflogGroup, path, "")
	})
	rules, _ := e.lab.Run(host, "iptables", "-S", "INPUT")
	if serr := p.Stop(); serr != nil {
		e.log.Warn("stop portsentry", "err", serr)
	}
	if err != nil {
		return nil, err
	}
	if res.nerr != nil {
		return nil, res.nerr
	}
	trigger, before, leakNonTrap, leakAny := countLeaks(res.sent, res.got, s.proto, isTrap)
	blocked := "no"
	if strings.Contains(rules, "-s "+netip.PrefixFrom(src, 32).String()+" -j DROP") {
		blocked = "yes"
	}
	trig := "no trap probe"
	if trigger >= 0 {
		trig = num(float64(trigger + 1))
	}
	return []string{num(float64(len(res.sent))), trig, num(float64(before)), num(float64(leakNonTrap)), num(float64(leakAny)),
		"-", "peer", blocked, openPorts(res.out), leakTime(res, trigger, isTrap)}, nil
}
