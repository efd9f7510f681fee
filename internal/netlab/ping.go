package netlab

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Ping sends one ICMP echo request from namespace ns to dst and waits up to timeout for the
// matching reply. It needs no ping binary: the raw socket is opened inside ns with Do and keeps
// living there afterwards.
func (l *Lab) Ping(ns string, dst netip.Addr, timeout time.Duration) error {
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() && !dst.Is4In6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	dst = dst.Unmap()
	var conn *icmp.PacketConn
	if err := l.Do(ns, func() error {
		var err error
		conn, err = icmp.ListenPacket(network, listen)
		return err
	}); err != nil {
		return fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	defer conn.Close()

	id := os.Getpid() & 0xffff
	payload := []byte(fmt.Sprintf("snare-lab %d", time.Now().UnixNano()))
	msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: 1, Data: payload}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return fmt.Errorf("marshal echo: %w", err)
	}
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, ns, err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ping %s from %s: no reply: %w", dst, ns, err)
		}
		reply, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || reply.Type != replyType {
			continue
		}
		// Raw sockets see every echo reply of the namespace: match ours by source and payload.
		echo, ok := reply.Body.(*icmp.Echo)
		if !ok || !bytes.Equal(echo.Data, payload) {
			continue
		}
		if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(dst.AsSlice()) {
			continue
		}
		return nil
	}
}
