package lfgen

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestFrame(t *testing.T) {
	for _, kind := range []string{"udp4", "syn4", "udp6"} {
		src, dst := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
		if kind == "udp6" {
			src, dst = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
		}
		b, err := Frame(Packet{Kind: kind, Src: src, Dst: dst, DPort: 5000})
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 60 {
			t.Errorf("%s: frame of %d bytes, want at least 60", kind, len(b))
		}
		p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
		if p.ErrorLayer() != nil {
			t.Fatalf("%s: %v", kind, p.ErrorLayer().Error())
		}
		nl := p.NetworkLayer()
		if nl == nil || nl.NetworkFlow().Src().String() != src.String() {
			t.Errorf("%s: source not %s in %v", kind, src, p)
		}
		if kind == "syn4" {
			tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if tcp == nil || !tcp.SYN || tcp.DstPort != 5000 {
				t.Errorf("syn4: not a SYN to 5000: %v", p)
			}
		} else {
			udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if udp == nil || udp.DstPort != 5000 {
				t.Errorf("%s: not UDP to 5000: %v", kind, p)
			}
			if kind == "udp4" && udp.Checksum != 0 {
				t.Errorf("udp4: checksum %#x, want 0", udp.Checksum)
			}
		}
	}
}

func TestFrameBadInput(t *testing.T) {
	v4, v6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")
	for _, p := range []Packet{
		{Kind: "icmp", Src: v4, Dst: v4},
		{Kind: "udp4", Src: v6, Dst: v4},
		{Kind: "udp6", Src: v4, Dst: v6},
		{Kind: "udp4"},
	} {
		if _, err := Frame(p); err == nil {
			t.Errorf("Frame(%+v): no error", p)
		}
	}
}
