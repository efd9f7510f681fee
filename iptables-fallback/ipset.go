package fallback

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A small ipset client over one persistent netlink socket. vishvananda/netlink's ipset API sends
// one request per entry, each on a socket of its own, and cannot create sets with a hashsize or a
// netmask (the IPv6 block length): a bulk load would be a million round trips on a million
// sockets. ipset itself loads lists by packing many elements into one message (IPSET_ATTR_ADT),
// which is what add and del do here. The constants are those of linux/netfilter/ipset/ip_set.h.

const (
	ipsetProtocol = 7

	ipsetCmdCreate  = 2
	ipsetCmdDestroy = 3
	ipsetCmdFlush   = 4
	ipsetCmdSwap    = 6
	ipsetCmdList    = 7
	ipsetCmdAdd     = 9
	ipsetCmdDel     = 10
	ipsetCmdType    = 13

	// command-level attributes
	ipsetAttrProtocol    = 1
	ipsetAttrSetname     = 2
	ipsetAttrTypename    = 3
	ipsetAttrSetname2    = 3
	ipsetAttrRevision    = 4
	ipsetAttrFamily      = 5
	ipsetAttrFlags       = 6
	ipsetAttrData        = 7
	ipsetAttrADT         = 8
	ipsetAttrLineno      = 9
	ipsetAttrRevisionMin = 10

	// data attributes
	ipsetAttrIP        = 1
	ipsetAttrCIDR      = 3
	ipsetAttrPort      = 4
	ipsetAttrPortTo    = 5
	ipsetAttrTimeout   = 6
	ipsetAttrCadtFlags = 8
	ipsetAttrHashsize  = 18
	ipsetAttrMaxelem   = 19
	ipsetAttrNetmask   = 20
	ipsetAttrElements  = 24
	ipsetAttrRefs      = 25
	ipsetAttrPackets   = 25 // in entries (ADT numbering), not headers
	ipsetAttrComment   = 26 // in entries
	ipsetAttrIPv4      = 1
	ipsetAttrIPv6      = 2

	ipsetFlagWithCounters = 1 << 3 // cadt flag
	ipsetFlagWithComment  = 1 << 4 // cadt flag
	ipsetFlagListHeader   = 1 << 2 // command flag: list the header only

	nfnlSubsysIpset = 6

	// ipset's own error numbers (kernel returns them as negative errno values)
	ipsetErrPrivate  = 4096
	ipsetErrExist    = 4103
	ipsetErrTimeout  = 4107
	ipsetErrRefd     = 4108
	ipsetErrHashFull = 4352
)

// ipsetMaxTimeout is the longest timeout ipset accepts (UINT_MAX / 1000 seconds).
const ipsetMaxTimeout = 2147483

// timeoutUntil is the ipset timeout that ends at deadline: whole seconds rounded up, so an entry
// never stops dropping early; at least 1 (0 would mean "never").
func timeoutUntil(deadline, now time.Time) uint32 {
	secs := (deadline.Sub(now) + time.Second - 1) / time.Second
	return uint32(min(max(secs, 1), ipsetMaxTimeout))
}

// errSetMissing is returned when a set does not exist.
var errSetMissing = errors.New("set does not exist")

// ipsetError turns ipset's private error numbers into readable errors.
type ipsetError int

func (e ipsetError) Error() string {
	switch int(e) {
	case ipsetErrExist:
		return "element or set already exists or is missing"
	case ipsetErrTimeout:
		return "set has no timeout support"
	case ipsetErrRefd:
		return "set is referenced by a firewall rule"
	case ipsetErrHashFull:
		return "set is full (maxelem reached)"
	case 4097:
		return "ipset protocol error"
	case 4098:
		return "set type not supported by the kernel"
	case 4102:
		return "set type mismatch"
	case 4104:
		return "invalid prefix length"
	case 4106:
		return "invalid family"
	}
	return fmt.Sprintf("ipset error %d", int(e))
}

func mapIpsetErr(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		switch {
		case errno == unix.ENOENT:
			return errSetMissing
		case errno >= ipsetErrPrivate:
			return ipsetError(errno)
		}
		return errno
	}
	return err
}

// setEntry is one element of a hash:ip, hash:net or bitmap:port set.
type setEntry struct {
	Prefix  netip.Prefix // hash:ip: the (masked) address as a host prefix
	Timeout uint32       // seconds left (0: none)
	// Deadline, when set, gives Timeout at the moment the entry is sent: a million-entry load
	// takes seconds, and timeouts computed up front would all end late by that much.
	Deadline time.Time
	Packets  uint64
	Comment  string
	Port     uint16 // bitmap:port sets
}

// setHeader describes an existing set.
type setHeader struct {
	Type       string
	Family     uint8
	MaxElem    uint32
	Elements   uint32
	References uint32
	Netmask    uint8 // hash:ip only (0: not reported, i.e. host addresses)
	HasTimeout bool
	Counters   bool
	Comment    bool
}

// setSpec is what create makes.
type setSpec struct {
	Type     string // "hash:ip", "hash:net" or "bitmap:port"
	Family   uint8  // unix.NFPROTO_IPV4 / IPV6 for the hash types
	MaxElem  uint32
	HashSize uint32
	Netmask  uint8 // hash:ip: store addresses masked to this length (0: host addresses)
	Timeout  bool  // timeout support (default timeout 0 = no expiry)
	Counters bool
	Comment  bool
}

type ipsetConn struct {
	mu   sync.Mutex // one request at a time keeps batches in order
	c    *netlink.Conn
	nsFD int
}

// dialIpset opens a netfilter netlink socket in the network namespace nsFD (0: current thread's).
func dialIpset(nsFD int) (*ipsetConn, error) {
	c, err := dialNetfilter(nsFD)
	if err != nil {
		return nil, err
	}
	return &ipsetConn{c: c, nsFD: nsFD}, nil
}

func dialNetfilter(nsFD int) (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD})
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	// Large batches go out in one message each; make sure the socket takes them.
	_ = c.SetWriteBuffer(1 << 20)
	_ = c.SetReadBuffer(4 << 20)
	return c, nil
}

func (s *ipsetConn) Close() error { return s.c.Close() }

func newIpsetEncoder() *netlink.AttributeEncoder {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	return ae
}

func (s *ipsetConn) exec(cmd int, flags netlink.HeaderFlags, family uint8, ae *netlink.AttributeEncoder) ([]netlink.Message, error) {
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	// Commands that answer with data (type, list) get no extra ACK: Execute reads one reply, and
	// a separate ACK left queued would answer the next request.
	if cmd != ipsetCmdType && flags&netlink.Dump == 0 {
		flags |= netlink.Acknowledge
	}
	data := make([]byte, 4, 4+len(attrs))
	data[0] = family // nfgenmsg: family, version 0, res_id 0
	data = append(data, attrs...)
	msg := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysIpset<<8 | cmd),
			Flags: netlink.Request | flags,
		},
		Data: data,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs, err := s.c.Execute(msg)
	if err != nil {
		if flags&netlink.Dump != 0 {
			// A failed dump (e.g. of a missing set) leaves a second error message queued that
			// would answer the next request: start over on a fresh socket.
			if c, derr := dialNetfilter(s.nsFD); derr == nil {
				s.c.Close()
				s.c = c
			}
		}
		return nil, mapIpsetErr(err)
	}
	return msgs, nil
}

// typeRevision asks the kernel for the newest revision of a set type.
func (s *ipsetConn) typeRevision(typ string, family uint8) (uint8, error) {
	ae := newIpsetEncoder()
	ae.String(ipsetAttrTypename, typ)
	ae.Uint8(ipsetAttrFamily, family)
	msgs, err := s.exec(ipsetCmdType, 0, unix.AF_INET, ae)
	if err != nil {
		return 0, fmt.Errorf("ipset type %s: %w", typ, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		for ad.Next() {
			if ad.Type() == ipsetAttrRevision {
				return ad.Uint8(), nil
			}
		}
	}
	return 0, fmt.Errorf("ipset type %s: kernel sent no revision", typ)
}

// create makes a set; an identical existing set is fine (ipset's "-exist"), a different one
// with the same name fails with unix.EEXIST.
func (s *ipsetConn) create(name string, spec setSpec) error {
	rev, err := s.typeRevision(spec.Type, spec.Family)
	if err != nil {
		return err
	}
	ae := newIpsetEncoder()
	ae.String(ipsetAttrSetname, name)
	ae.String(ipsetAttrTypename, spec.Type)
	ae.Uint8(ipsetAttrRevision, rev)
	ae.Uint8(ipsetAttrFamily, spec.Family)
	ae.Nested(ipsetAttrData, func(d *netlink.AttributeEncoder) error {
		const nbo = netlink.NetByteOrder
		if spec.Type == "bitmap:port" {
			d.Uint16(ipsetAttrPort|nbo, 0)
			d.Uint16(ipsetAttrPortTo|nbo, 65535)
		}
		if spec.HashSize > 0 {
			d.Uint32(ipsetAttrHashsize|nbo, spec.HashSize)
		}
		if spec.MaxElem > 0 {
			d.Uint32(ipsetAttrMaxelem|nbo, spec.MaxElem)
		}
		if spec.Timeout {
			d.Uint32(ipsetAttrTimeout|nbo, 0)
		}
		if spec.Netmask > 0 {
			d.Uint8(ipsetAttrNetmask, spec.Netmask)
		}
		var flags uint32
		if spec.Counters {
			flags |= ipsetFlagWithCounters
		}
		if spec.Comment {
			flags |= ipsetFlagWithComment
		}
		if flags != 0 {
			d.Uint32(ipsetAttrCadtFlags|nbo, flags)
		}
		return nil
	})
	// Without NLM_F_EXCL the kernel accepts re-creating an identical set.
	if _, err := s.exec(ipsetCmdCreate, netlink.Create, unix.AF_INET, ae); err != nil {
		return fmt.Errorf("create set %s: %w", name, err)
	}
	return nil
}

func (s *ipsetConn) byName(cmd int, name string) error {
	ae := newIpsetEncoder()
	ae.String(ipsetAttrSetname, name)
	_, err := s.exec(cmd, 0, unix.AF_INET, ae)
	return err
}

// destroy removes a set; a missing set is not an error.
func (s *ipsetConn) destroy(name string) error {
	if err := s.byName(ipsetCmdDestroy, name); err != nil && !errors.Is(err, errSetMissing) {
		return fmt.Errorf("destroy set %s: %w", name, err)
	}
	return nil
}

func (s *ipsetConn) flush(name string) error {
	if err := s.byName(ipsetCmdFlush, name); err != nil {
		return fmt.Errorf("flush set %s: %w", name, err)
	}
	return nil
}

// swap exchanges two sets' names (and so their contents, as seen by rules referring to them).
func (s *ipsetConn) swap(a, b string) error {
	ae := newIpsetEncoder()
	ae.String(ipsetAttrSetname, a)
	ae.String(ipsetAttrSetname2, b)
	if _, err := s.exec(ipsetCmdSwap, 0, unix.AF_INET, ae); err != nil {
		return fmt.Errorf("swap sets %s and %s: %w", a, b, err)
	}
	return nil
}

// header reads a set's type and size without its elements; errSetMissing if absent.
func (s *ipsetConn) header(name string) (setHeader, error) {
	var h setHeader
	ae := newIpsetEncoder()
	ae.String(ipsetAttrSetname, name)
	ae.Uint32(ipsetAttrFlags|netlink.NetByteOrder, ipsetFlagListHeader)
	msgs, err := s.exec(ipsetCmdList, netlink.Dump, unix.AF_INET, ae)
	if err != nil {
		return h, fmt.Errorf("list set %s: %w", name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return h, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			switch ad.Type() {
			case ipsetAttrTypename:
				h.Type = ad.String()
			case ipsetAttrFamily:
				h.Family = ad.Uint8()
			case ipsetAttrData:
				ad.Nested(func(d *netlink.AttributeDecoder) error {
					for d.Next() {
						switch d.Type() {
						case ipsetAttrMaxelem:
							h.MaxElem = d.Uint32()
						case ipsetAttrElements:
							h.Elements = d.Uint32()
						case ipsetAttrRefs:
							h.References = d.Uint32()
						case ipsetAttrNetmask:
							h.Netmask = d.Uint8()
						case ipsetAttrTimeout:
							h.HasTimeout = true
						case ipsetAttrCadtFlags:
							f := d.Uint32()
							h.Counters = f&ipsetFlagWithCounters != 0
							h.Comment = f&ipsetFlagWithComment != 0
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return h, fmt.Errorf("parse header of set %s: %w", name, err)
		}
	}
	return h, nil
}

// list calls fn for every element of a set. A million-entry set is decoded by walking the
// attributes in place (the generic decoder allocates per attribute and dominated the listing).
func (s *ipsetConn) list(name string, fn func(setEntry)) error {
	ae := newIpsetEncoder()
	ae.String(ipsetAttrSetname, name)
	msgs, err := s.exec(ipsetCmdList, netlink.Dump, unix.AF_INET, ae)
	if err != nil {
		return fmt.Errorf("list set %s: %w", name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		walkAttrs(m.Data[4:], func(typ uint16, adt []byte) {
			if typ != ipsetAttrADT {
				return
			}
			walkAttrs(adt, func(typ uint16, data []byte) {
				if typ == ipsetAttrData {
					fn(decodeEntry(data))
				}
			})
		})
	}
	return nil
}

// walkAttrs calls fn with the type (flags masked off) and payload of each netlink attribute in b.
func walkAttrs(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&0x3fff, b[4:l])
		next := (l + 3) &^ 3
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

func decodeEntry(data []byte) setEntry {
	var e setEntry
	var addr netip.Addr
	bits := -1
	walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case ipsetAttrIP:
			walkAttrs(v, func(_ uint16, ip []byte) {
				if a, ok := netip.AddrFromSlice(ip); ok {
					addr = a
				}
			})
		case ipsetAttrCIDR:
			if len(v) >= 1 {
				bits = int(v[0])
			}
		case ipsetAttrTimeout:
			if len(v) >= 4 {
				e.Timeout = binary.BigEndian.Uint32(v)
			}
		case ipsetAttrPackets:
			if len(v) >= 8 {
				e.Packets = binary.BigEndian.Uint64(v)
			}
		case ipsetAttrComment:
			e.Comment = strings.TrimRight(string(v), "\x00")
		case ipsetAttrPort:
			if len(v) >= 2 {
				e.Port = binary.BigEndian.Uint16(v)
			}
		}
	})
	if addr.IsValid() {
		if bits < 0 {
			bits = addr.BitLen()
		}
		e.Prefix = netip.PrefixFrom(addr, bits)
	}
	return e
}

// maxBatchBytes bounds one message: the kernel refuses messages above the socket's send buffer.
const maxBatchBytes = 60 << 10

// adt sends entries in as few messages as fit, each one holding many elements (ipset's own
// batching). Without NLM_F_EXCL the kernel replaces existing elements on add (their counters
// stay) and ignores missing ones on del. encode writes one element's attributes.
func (s *ipsetConn) adt(cmd int, name string, n int, encode func(i int, d *netlink.AttributeEncoder)) error {
	const perEntry = 64 // upper bound of one encoded v6 element with timeout and a short comment
	per := maxBatchBytes / perEntry
	for start := 0; start < n; start += per {
		end := min(start+per, n)
		ae := newIpsetEncoder()
		ae.String(ipsetAttrSetname, name)
		ae.Uint32(ipsetAttrLineno|netlink.NetByteOrder, 0) // the kernel wants it with a batch
		ae.Nested(ipsetAttrADT, func(adt *netlink.AttributeEncoder) error {
			for i := start; i < end; i++ {
				adt.Nested(ipsetAttrData, func(d *netlink.AttributeEncoder) error {
					encode(i, d)
					return nil
				})
			}
			return nil
		})
		if _, err := s.exec(cmd, 0, unix.AF_INET, ae); err != nil {
			return err
		}
	}
	return nil
}

// encodePrefix writes an element's address; hash:net sets also take its length (hash:ip sets
// refuse a CIDR attribute for IPv6).
func encodePrefix(d *netlink.AttributeEncoder, p netip.Prefix, withCIDR bool) {
	d.Nested(ipsetAttrIP, func(ip *netlink.AttributeEncoder) error {
		if p.Addr().Is4() {
			a := p.Addr().As4()
			ip.Bytes(ipsetAttrIPv4|netlink.NetByteOrder, a[:])
		} else {
			a := p.Addr().As16()
			ip.Bytes(ipsetAttrIPv6|netlink.NetByteOrder, a[:])
		}
		return nil
	})
	if withCIDR {
		d.Uint8(ipsetAttrCIDR, uint8(p.Bits()))
	}
}

// add inserts or replaces entries of a hash:net (isNet) or hash:ip set with timeout support
// (Timeout 0 means no expiry). A replaced entry gets the new timeout and comment.
func (s *ipsetConn) add(name string, isNet bool, entries []setEntry) error {
	err := s.adt(ipsetCmdAdd, name, len(entries), func(i int, d *netlink.AttributeEncoder) {
		e := &entries[i]
		encodePrefix(d, e.Prefix, isNet)
		timeout := e.Timeout
		if !e.Deadline.IsZero() {
			timeout = timeoutUntil(e.Deadline, time.Now())
		}
		d.Uint32(ipsetAttrTimeout|netlink.NetByteOrder, timeout)
		if e.Packets > 0 { // initial counter (a trap block counts its trigger, as in XDP)
			d.Uint64(ipsetAttrPackets|netlink.NetByteOrder, e.Packets)
		}
		if e.Comment != "" {
			d.String(ipsetAttrComment, e.Comment)
		}
	})
	if err != nil {
		return fmt.Errorf("add %d entries to set %s: %w", len(entries), name, err)
	}
	return nil
}

// addPlain inserts entries into a set without timeout support (the allowlist).
func (s *ipsetConn) addPlain(name string, isNet bool, entries []setEntry) error {
	err := s.adt(ipsetCmdAdd, name, len(entries), func(i int, d *netlink.AttributeEncoder) {
		encodePrefix(d, entries[i].Prefix, isNet)
	})
	if err != nil {
		return fmt.Errorf("add %d entries to set %s: %w", len(entries), name, err)
	}
	return nil
}

// del removes prefixes; missing ones are ignored.
func (s *ipsetConn) del(name string, isNet bool, prefixes []netip.Prefix) error {
	err := s.adt(ipsetCmdDel, name, len(prefixes), func(i int, d *netlink.AttributeEncoder) {
		encodePrefix(d, prefixes[i], isNet)
	})
	if err != nil {
		return fmt.Errorf("delete %d entries from set %s: %w", len(prefixes), name, err)
	}
	return nil
}

func (s *ipsetConn) addPorts(name string, ports []uint16) error {
	err := s.adt(ipsetCmdAdd, name, len(ports), func(i int, d *netlink.AttributeEncoder) {
		d.Uint16(ipsetAttrPort|netlink.NetByteOrder, ports[i])
	})
	if err != nil {
		return fmt.Errorf("add ports to set %s: %w", name, err)
	}
	return nil
}

func (s *ipsetConn) delPorts(name string, ports []uint16) error {
	err := s.adt(ipsetCmdDel, name, len(ports), func(i int, d *netlink.AttributeEncoder) {
		d.Uint16(ipsetAttrPort|netlink.NetByteOrder, ports[i])
	})
	if err != nil {
		return fmt.Errorf("delete ports from set %s: %w", name, err)
	}
	return nil
}

// listPorts reads a bitmap:port set.
func (s *ipsetConn) listPorts(name string) ([]uint16, error) {
	var ports []uint16
	err := s.list(name, func(e setEntry) { ports = append(ports, e.Port) })
	return ports, err
}
