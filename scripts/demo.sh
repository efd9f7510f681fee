#!/usr/bin/env bash
# snare demo (`sudo make demo`): see snare catch a port scanner without touching your network.
#
# Builds a lab of three network namespaces joined by veth pairs (no route out of them; addresses
# from 198.18.0.0/15, the benchmarking range), starts snared on the "host", runs nmap from the
# "attacker", shows the attacker blocked at its first trap port while the "client" is still
# served, shows the events, and waits for the block to expire (a 30 s TTL). Everything is torn
# down on exit, also on Ctrl-C or an error. SNARE_DEMO_BACKEND=iptables shows the fallback.
#
#   attacker 198.18.1.2 ---- 198.18.1.1 [host: snared + web :8080] 198.18.2.1 ---- 198.18.2.2 client
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: needs root (network namespaces, XDP); run: sudo make demo" >&2
	exit 1
fi
GO=${GO:-go}
for c in ip nsenter nmap "$GO" timeout mountpoint; do
	command -v "$c" >/dev/null || { echo "demo.sh: needs $c (make deps installs the tools)" >&2; exit 1; }
done
cd "$(dirname "$0")/.."

SFX=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST=snare-demo-host-$SFX
ATT=snare-demo-att-$SFX
CLI=snare-demo-cli-$SFX
WORK=$(mktemp -d /tmp/snare-demo-XXXXXX)
BPFFS=/sys/fs/bpf/snare-demo-$SFX
SOCK=$WORK/snare.sock
TTL=30
SNARED_PID=
WEB_PID=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_host() { nsenter --net="/run/netns/$HOST" -- "$@"; }
ctl() { echo "\$ snarectl $*"; "$WORK/snarectl" --socket "$SOCK" "$@"; }
snared_args() {
	echo --config "$WORK/snare.yaml" --backend "${SNARE_DEMO_BACKEND:-auto}" --state-dir "$WORK/state" \
		--socket "$SOCK" --bpffs "$BPFFS" --iface "h-att-$SFX" --iface "h-cli-$SFX"
}

cleanup() {
	set +e
	say "tearing the lab down"
	if [ -n "$SNARED_PID" ]; then
		kill "$SNARED_PID" 2>/dev/null
		wait "$SNARED_PID" 2>/dev/null
		if kill -0 "$SNARED_PID" 2>/dev/null; then
			echo "snared (pid $SNARED_PID) did not stop; killing it" >&2
			kill -KILL "$SNARED_PID"
		fi
	fi
	if [ -n "$WEB_PID" ]; then kill "$WEB_PID" 2>/dev/null; wait "$WEB_PID" 2>/dev/null; fi
	if [ -x "$WORK/snared" ] && [ -e "/run/netns/$HOST" ]; then
		# shellcheck disable=SC2046
		in_host "$WORK/snared" uninstall $(snared_args) >/dev/null 2>&1
	fi
	rm -rf "$BPFFS"
	for ns in "$HOST" "$ATT" "$CLI"; do
		[ -e "/run/netns/$ns" ] && ip netns del "$ns"
	done
	rm -rf "$WORK"
	if [ -n "$SNARED_PID" ] && kill -0 "$SNARED_PID" 2>/dev/null; then
		echo "warning: snared pid $SNARED_PID still running" >&2
	else
		echo "done: namespaces, daemon, pins and temp files removed"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fetch NS ADDR: one HTTP request to the host's web server, at most 3 s.
fetch() {
	ip netns exec "$1" timeout 3 bash -c \
		"exec 3<>/dev/tcp/$2/8080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3" 2>/dev/null
}
show_fetch() {
	local who=$1 ns=$2 addr=$3 out
	if out=$(fetch "$ns" "$addr"); then
		echo "$who -> http://$addr:8080/ : $out"
	else
		echo "$who -> http://$addr:8080/ : no answer (packets dropped)"
	fi
}

say "building snared and snarectl"
"$GO" build -o "$WORK/snared" ./cmd/snared
"$GO" build -o "$WORK/snarectl" ./cmd/snarectl
"$GO" build -o "$WORK/demoweb" ./e2e/demoweb

say "building the lab (suffix $SFX)"
for ns in "$HOST" "$ATT" "$CLI"; do
	ip netns add "$ns"
	ip -n "$ns" link set lo up
done
ip link add "h-att-$SFX" netns "$HOST" type veth peer name "att-$SFX" netns "$ATT"
ip link add "h-cli-$SFX" netns "$HOST" type veth peer name "cli-$SFX" netns "$CLI"
ip -n "$HOST" addr add 198.18.1.1/24 dev "h-att-$SFX"
ip -n "$HOST" addr add 198.18.2.1/24 dev "h-cli-$SFX"
ip -n "$ATT" addr add 198.18.1.2/24 dev "att-$SFX"
ip -n "$CLI" addr add 198.18.2.2/24 dev "cli-$SFX"
for pair in "$HOST h-att-$SFX" "$HOST h-cli-$SFX" "$ATT att-$SFX" "$CLI cli-$SFX"; do
	set -- $pair
	ip -n "$1" link set "$2" up
done
echo "attacker $ATT 198.18.1.2 | host $HOST 198.18.1.1, 198.18.2.1 | client $CLI 198.18.2.2"

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
cat >"$WORK/snare.yaml" <<EOF
block:
  ttl: ${TTL}s          # short, to watch the block expire
sweep:
  interval: 2s
metrics:
  listen: ""
# trap ports: the embedded defaults (portsentry's classic lists, e.g. TCP 1, 79, 111, 31337)
EOF

say "starting the web server and snared on the host"
ip netns exec "$HOST" "$WORK/demoweb" 0.0.0.0:8080 >"$WORK/web.log" 2>&1 &
WEB_PID=$!
# nsenter --net keeps this mount namespace, so the pins under /sys/fs/bpf outlive the process.
# Called directly (not through in_host) so that $! is snared itself: nsenter execs it.
# shellcheck disable=SC2046
nsenter --net="/run/netns/$HOST" -- "$WORK/snared" $(snared_args) >"$WORK/snared.log" 2>&1 &
SNARED_PID=$!
for _ in $(seq 1 100); do
	"$WORK/snarectl" --socket "$SOCK" status >/dev/null 2>&1 && break
	kill -0 "$SNARED_PID" 2>/dev/null || { cat "$WORK/snared.log"; exit 1; }
	sleep 0.1
done
ctl status

say "before the scan: both are served"
show_fetch attacker "$ATT" 198.18.1.1
show_fetch client "$CLI" 198.18.2.1

say "the attacker scans the host (ports in order: 22, then trap port 79, then 111 and the web port 8080)"
echo "\$ nmap -n -Pn -r -sS --max-retries 1 -p 22,79,111,8080 198.18.1.1"
scan=$(ip netns exec "$ATT" nmap -n -Pn -r -sS --max-retries 1 -p 22,79,111,8080 198.18.1.1)
echo "$scan"
if echo "$scan" | grep -Eq '^8080/tcp +filtered'; then
	echo "(nmap never saw the web server: the SYN to trap port 79 blocked the attacker, so"
	echo " everything after it was dropped)"
else
	echo "(the web port answered before the block landed: the trap was handled in user space)"
fi

sleep 1
say "the attacker is blocked"
ctl list
say "the attacker gets nothing, the client is still served"
show_fetch attacker "$ATT" 198.18.1.1
show_fetch client "$CLI" 198.18.2.1

say "the event log (the old scan.log)"
ctl events
say "status"
ctl status

say "waiting for the block to expire (TTL ${TTL}s)"
start=$SECONDS
while [ $((SECONDS - start)) -lt $((TTL + 15)) ]; do
	if fetch "$ATT" 198.18.1.1 >/dev/null; then
		echo "the attacker is served again, $((SECONDS - start)) s later"
		break
	fi
	sleep 1
done
show_fetch attacker "$ATT" 198.18.1.1
sleep 3 # one sweep: the expiry reaches the log
ctl list
ctl events
