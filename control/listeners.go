package control

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TCP socket states as the kernel numbers them (include/net/tcp_states.h).
const tcpListen = 10

// ListeningPorts returns every local port something on the host listens on: TCP sockets in
// LISTEN state and every UDP socket (bound or connected), IPv4 and IPv6, in the network namespace
// of the calling thread. A port counts whatever address it is bound to, so a service bound to
// loopback only still keeps its port out of the trap set: a trap must never be a served port.
//
// Connected UDP sockets count too: a reply to one of the host's own UDP client sockets (NTP,
// syslog, a resolver that is not allowlisted) must never trip a trap.
//
// It asks the kernel through socket diagnostics over netlink (NETLINK_SOCK_DIAG), which filters
// TCP by state in the kernel so a host with many connections costs little; where sock_diag is not
// available (inet_diag/udp_diag not built) it reads /proc/net/{tcp,tcp6,udp,udp6} instead.
func ListeningPorts(ctx context.Context) (tcp, udp map[uint16]bool, err error) {
	tcp, udp = map[uint16]bool{}, map[uint16]bool{}
	for _, q := range []struct {
		proto  uint8
		family uint8
		states uint32
		into   map[uint16]bool
		proc   string
	}{
		{unix.IPPROTO_TCP, unix.AF_INET, 1 << tcpListen, tcp, "/proc/net/tcp"},
		{unix.IPPROTO_TCP, unix.AF_INET6, 1 << tcpListen, tcp, "/proc/net/tcp6"},
		{unix.IPPROTO_UDP, unix.AF_INET, 0xfff, udp, "/proc/net/udp"},
		{unix.IPPROTO_UDP, unix.AF_INET6, 0xfff, udp, "/proc/net/udp6"},
	} {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		diagErr := sockDiagPorts(q.proto, q.family, q.states, q.into)
		if diagErr == nil {
			continue
		}
		onlyListen := q.proto == unix.IPPROTO_TCP
		procErr := procNetPorts(q.proc, onlyListen, q.into)
		if procErr == nil {
			continue
		}
		if errors.Is(procErr, os.ErrNotExist) && q.family == unix.AF_INET6 {
			// No IPv6 in this kernel: nothing can listen on it.
			continue
		}
		return nil, nil, fmt.Errorf("list listening sockets (%s): sock_diag: %v; %w", q.proc, diagErr, procErr)
	}
	return tcp, udp, nil
}

// inetDiagReq is struct inet_diag_req_v2 (linux/inet_diag.h). The socket id is left zero: we
// dump every socket of the family and protocol in the requested states.
type inetDiagReq struct {
	family, protocol uint8
	states           uint32
}

const sizeofInetDiagReq = 56

func (r *inetDiagReq) Len() int { return sizeofInetDiagReq }

func (r *inetDiagReq) Serialize() []byte {
	b := make([]byte, sizeofInetDiagReq)
	b[0] = r.family
	b[1] = r.protocol
	// b[2] ext, b[3] pad: zero, we want no extensions.
	binary.NativeEndian.PutUint32(b[4:8], r.states)
	return b
}

// sockDiagPorts adds the local port of every socket matching proto, family and states to into.
// A dump the kernel reports as interrupted (sockets changed meanwhile) is retried, because a
// partial answer could miss a listener and make its port a trap.
func sockDiagPorts(proto, family uint8, states uint32, into map[uint16]bool) error {
	const attempts = 3
	var err error
	for range attempts {
		found := map[uint16]bool{}
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(&inetDiagReq{family: family, protocol: proto, states: states})
		err = req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
			// struct inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid whose
			// first field is the source (local) port in network byte order.
			if len(msg) < 6 {
				return true
			}
			found[binary.BigEndian.Uint16(msg[4:6])] = true
			return true
		})
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return err
		}
		for p := range found {
			into[p] = true
		}
		return nil
	}
	return fmt.Errorf("socket dump interrupted %d times: %w", attempts, err)
}

// procNetPorts parses a /proc/net/{tcp,tcp6,udp,udp6} table and adds the local ports to into;
// with onlyListen, only sockets in TCP LISTEN state.
func procNetPorts(path string, onlyListen bool, into map[uint16]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return parseProcNet(f, onlyListen, into)
}

// parseProcNet reads lines like
//
//	sl  local_address rem_address   st ...
//	 0: 0100007F:0035 00000000:0000 0A ...
func parseProcNet(r io.Reader, onlyListen bool, into map[uint16]bool) error {
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		_, portHex, ok := strings.Cut(fields[1], ":")
		if !ok {
			return fmt.Errorf("bad local address %q", fields[1])
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			return fmt.Errorf("bad local port %q: %w", fields[1], err)
		}
		if onlyListen {
			st, err := strconv.ParseUint(fields[3], 16, 8)
			if err != nil {
				return fmt.Errorf("bad socket state %q: %w", fields[3], err)
			}
			if st != tcpListen {
				continue
			}
		}
		into[uint16(port)] = true
	}
	return sc.Err()
}
