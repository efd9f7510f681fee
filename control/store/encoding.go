package store

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// prefixKey encodes a (masked) prefix so that byte order equals netip.Prefix.Compare order:
// family (4 or 6), address bytes, prefix length.
func prefixKey(p netip.Prefix) []byte {
	return appendPrefixKey(make([]byte, 0, 18), p)
}

// appendPrefixKey appends prefixKey(p) to dst.
func appendPrefixKey(dst []byte, p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return append(dst, 4, b[0], b[1], b[2], b[3], byte(p.Bits()))
	}
	b := a.As16()
	dst = append(dst, 6)
	dst = append(dst, b[:]...)
	return append(dst, byte(p.Bits()))
}

func parsePrefixKey(k []byte) (netip.Prefix, error) {
	switch {
	case len(k) == 6 && k[0] == 4:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k[1:5])), int(k[5])), nil
	case len(k) == 18 && k[0] == 6:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte(k[1:17])), int(k[17])), nil
	}
	return netip.Prefix{}, fmt.Errorf("corrupt prefix key %x", k)
}

// unixMs is a time as unix milliseconds, 0 for the zero time.
func unixMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMs(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

var origins = []string{api.OriginManual, api.OriginTrap, api.OriginImport, api.OriginFleet}

// originFleet is the origin byte of a fleet rule, whose record carries two more fields.
const originFleet = 3

// encodeRule writes a rule compactly: origin byte, then varints created, deadline, offences,
// last offence, then, for a fleet rule only, the key revision (uvarint) and the node
// (uvarint length, bytes), then the reason's bytes.
func encodeRule(dst []byte, r Rule) []byte {
	o := slices.Index(origins, r.Origin)
	if o < 0 {
		o = 0
	}
	dst = append(dst, byte(o))
	dst = binary.AppendVarint(dst, unixMs(r.Created))
	dst = binary.AppendVarint(dst, unixMs(r.Deadline))
	dst = binary.AppendUvarint(dst, uint64(max(r.Offences, 0)))
	dst = binary.AppendVarint(dst, unixMs(r.LastOffence))
	if o == originFleet {
		dst = binary.AppendUvarint(dst, r.Revision)
		dst = binary.AppendUvarint(dst, uint64(len(r.Node)))
		dst = append(dst, r.Node...)
	}
	return append(dst, r.Reason...)
}

func decodeRule(p netip.Prefix, v []byte) (Rule, error) {
	origin, vals, reason, err := decodeRuleFields(p, v)
	if err != nil {
		return Rule{Prefix: p}, err
	}
	r := Rule{Prefix: p, Origin: origin, Created: fromMs(vals[0]), Deadline: fromMs(vals[1]), Offences: int(vals[2]),
		LastOffence: fromMs(vals[3])}
	if origin == api.OriginFleet {
		var node []byte
		r.Revision, node, reason, _ = splitFleet(reason)
		r.Node = string(node)
	}
	r.Reason = string(reason)
	return r, nil
}

// splitFleet splits what follows the numbers of a fleet rule: revision, node, reason.
func splitFleet(v []byte) (rev uint64, node, reason []byte, ok bool) {
	rev, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, nil, v, false
	}
	l, m := binary.Uvarint(v[n:])
	if m <= 0 || l > uint64(len(v)-n-m) {
		return 0, nil, v, false
	}
	v = v[n+m:]
	return rev, v[:l], v[l:], true
}

// decodeRuleFields splits an encoded rule without allocating: its origin, its four numbers
// (created, deadline, offences, last offence) and its reason (for a fleet rule, the revision,
// node and reason, checked; splitFleet separates them).
func decodeRuleFields(p netip.Prefix, v []byte) (origin string, vals [4]int64, reason []byte, err error) {
	if len(v) < 1 || int(v[0]) >= len(origins) {
		return "", vals, nil, fmt.Errorf("corrupt rule %s", p)
	}
	origin = origins[v[0]]
	v0 := v[0]
	v = v[1:]
	for i := range vals {
		var n int
		if i == 2 {
			var u uint64
			u, n = binary.Uvarint(v)
			vals[i] = int64(u)
		} else {
			vals[i], n = binary.Varint(v)
		}
		if n <= 0 {
			return "", vals, nil, fmt.Errorf("corrupt rule %s", p)
		}
		v = v[n:]
	}
	if v0 == originFleet {
		if _, _, _, ok := splitFleet(v); !ok {
			return "", vals, nil, fmt.Errorf("corrupt rule %s", p)
		}
	}
	return origin, vals, v, nil
}

func encodeOffence(o Offence) []byte {
	b := binary.AppendUvarint(nil, uint64(o.Count))
	return binary.AppendVarint(b, unixMs(o.Last))
}

func decodeOffence(v []byte) Offence {
	o, _ := parseOffence(v)
	return o
}

// parseOffence decodes an offence record; ok is false if it is corrupt.
func parseOffence(v []byte) (o Offence, ok bool) {
	c, n := binary.Uvarint(v)
	if n <= 0 {
		return Offence{}, false
	}
	l, m := binary.Varint(v[n:])
	if m <= 0 {
		return Offence{}, false
	}
	return Offence{Count: int(c), Last: fromMs(l)}, true
}

// rawDeadline reads only the deadline of an encoded rule (zero if permanent or corrupt).
func rawDeadline(v []byte) time.Time {
	if len(v) < 1 {
		return time.Time{}
	}
	v = v[1:]
	if _, n := binary.Varint(v); n > 0 {
		if d, m := binary.Varint(v[n:]); m > 0 {
			return fromMs(d)
		}
	}
	return time.Time{}
}
