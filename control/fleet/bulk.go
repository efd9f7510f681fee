package fleet

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/store"
)

// An import is shared in bulk: its blocks travel packed into values of about maxBulkBytes
// under keys of their own ("b.<random>"), not a key each. A key per entry costs the engine a
// message and a subject each: a million took 12 s and 663 MB of server memory in the
// calibration (issue 21). An unblock of a prefix a bulk value holds is the delete marker of the
// prefix's own key, newer than the bulk value's revision; so a marker of such a prefix must stay
// as long as the bulk value does, and the unblock writes one even where the key never held a value.
//
// The format (all integers unsigned varints):
//
//	"SNB1" count max-deadline-ms (0: some block is permanent) len(node) node
//	count times: family (4|6) address (4|16 bytes) bits deadline-ms (0: permanent) made-ms
//	             origin (0 manual, 1 trap, 2 import) len(reason) reason
const bulkMagic = "SNB1"

// maxBulkBytes bounds a bulk value: the engine refuses a message over its max_payload (1 MB by
// default), and a smaller value spreads a big import over more messages the hosts apply in turn.
const maxBulkBytes = 512 << 10

// bulkKeyPrefix starts the key of every bulk value; a prefix's own key starts with its family.
const bulkKeyPrefix = "b."

// maxBulkCount bounds the blocks a bulk value may claim (and what its decoding allocates): a
// message is at most 1 MB, a record at least 10 bytes.
const maxBulkCount = (1 << 20) / 10

var bulkOrigins = []string{api.OriginManual, api.OriginTrap, api.OriginImport}

// BulkKey is a new key for a bulk value: random, so no two hosts or restarts pick the same.
func BulkKey() string {
	b := make([]byte, 12)
	rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return bulkKeyPrefix + hex.EncodeToString(b)
}

// IsBulkKey reports whether k is the key of a bulk value.
func IsBulkKey(k string) bool { return strings.HasPrefix(k, bulkKeyPrefix) }

// EncodeBulk packs the rules at(i) for i from first on into one bulk value made by node, as many
// as fit in maxBulkBytes (at least one), and returns it with the index after the last packed.
func EncodeBulk(node string, first, n int, at func(int) store.Rule) (value []byte, next int) {
	var body []byte
	var maxDeadline int64
	permanent := false
	for next = first; next < n && (next == first || len(body) < maxBulkBytes-300); next++ {
		r := at(next)
		v := valueOf(r, node)
		a := r.Prefix.Addr()
		if a.Is4() {
			body = append(body, 4)
		} else {
			body = append(body, 6)
		}
		body = append(body, a.AsSlice()...)
		body = binary.AppendUvarint(body, uint64(r.Prefix.Bits()))
		body = binary.AppendUvarint(body, uint64(v.DeadlineMs))
		body = binary.AppendUvarint(body, uint64(v.MadeMs))
		origin := 0
		for i, o := range bulkOrigins {
			if o == r.Origin {
				origin = i
			}
		}
		body = append(body, byte(origin))
		body = binary.AppendUvarint(body, uint64(len(r.Reason)))
		body = append(body, r.Reason...)
		permanent = permanent || v.DeadlineMs == 0
		maxDeadline = max(maxDeadline, v.DeadlineMs)
	}
	if permanent {
		maxDeadline = 0
	}
	value = append(make([]byte, 0, len(body)+32+len(node)), bulkMagic...)
	value = binary.AppendUvarint(value, uint64(next-first))
	value = binary.AppendUvarint(value, uint64(maxDeadline))
	value = binary.AppendUvarint(value, uint64(len(node)))
	value = append(value, node...)
	return append(value, body...), next
}

// bulkHeader is what a bulk value says of itself.
type bulkHeader struct {
	count    int
	deadline time.Time // the latest of its blocks; zero: some block is permanent
	node     string
}

// bulkReader reads a bulk value's fields in turn; the first error sticks.
type bulkReader struct {
	b   []byte
	err error
}

func (r *bulkReader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.err = errors.New("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *bulkReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = errors.New("cut short")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

const maxMs = 1<<63 - 1

func readBulkHeader(r *bulkReader) bulkHeader {
	if string(r.bytes(len(bulkMagic))) != bulkMagic {
		r.err = errors.Join(r.err, errors.New("not a bulk value of this version"))
		return bulkHeader{}
	}
	h := bulkHeader{count: int(r.uvarint(maxBulkCount))}
	if ms := r.uvarint(maxMs); ms != 0 {
		h.deadline = time.UnixMilli(int64(ms))
	}
	h.node = string(r.bytes(int(r.uvarint(64))))
	return h
}

// BulkInfo returns how many blocks a bulk value holds and the latest deadline among them (zero
// when one is permanent).
func BulkInfo(value []byte) (count int, deadline time.Time, err error) {
	r := &bulkReader{b: value}
	h := readBulkHeader(r)
	if r.err != nil {
		return 0, time.Time{}, fmt.Errorf("bulk value: %w", r.err)
	}
	return h.count, h.deadline, nil
}

// decodeBulk checks a bulk value read from key k (revision rev) and returns the rules it makes
// here, skipping expired ones, and the node that made it. A block that does not check is
// refused alone (counted in refused, the first error returned in bad); a value that does not
// parse is refused whole (err).
func (l limits) decodeBulk(k string, data []byte, rev uint64, now time.Time) (rules []store.Rule, node string, refused int, bad, err error) {
	r := &bulkReader{b: data}
	h := readBulkHeader(r)
	if r.err != nil {
		return nil, "", 0, nil, fmt.Errorf("key %s: bulk value: %w", k, r.err)
	}
	if err := checkNode(h.node); err != nil {
		return nil, "", 0, nil, fmt.Errorf("key %s: bulk value: %w", k, err)
	}
	rules = make([]store.Rule, 0, h.count)
	for i := range h.count {
		var size int
		switch fam := r.bytes(1); {
		case r.err != nil:
		case fam[0] == 4:
			size = 4
		case fam[0] == 6:
			size = 16
		default:
			r.err = fmt.Errorf("unknown family %d", fam[0])
		}
		a, _ := netip.AddrFromSlice(r.bytes(size))
		bits := r.uvarint(128)
		v := Value{DeadlineMs: int64(r.uvarint(maxMs)), MadeMs: int64(r.uvarint(maxMs)), Node: h.node}
		if o := r.uvarint(uint64(len(bulkOrigins) - 1)); r.err == nil {
			v.Origin = bulkOrigins[o]
		}
		v.Reason = string(r.bytes(int(r.uvarint(uint64(len(r.b))))))
		if r.err != nil {
			return nil, "", 0, nil, fmt.Errorf("key %s: bulk value, block %d of %d: %w", k, i+1, h.count, r.err)
		}
		p, perr := a.Prefix(int(bits))
		if perr != nil || p.Addr() != a {
			refused++
			if bad == nil {
				bad = fmt.Errorf("key %s: bulk block %d: %s/%d is not a canonical prefix", k, i+1, a, bits)
			}
			continue
		}
		rule, err := l.rule(p, v, rev, now)
		if rerr := checkReason(p, v.Reason); rerr != nil {
			err = rerr
		}
		switch {
		case errors.Is(err, errExpired):
		case err != nil:
			refused++
			if bad == nil {
				bad = fmt.Errorf("key %s: bulk block %d: %w", k, i+1, err)
			}
		default:
			rules = append(rules, rule)
		}
	}
	if len(r.b) != 0 {
		return nil, "", 0, nil, fmt.Errorf("key %s: bulk value: %d bytes after its %d blocks", k, len(r.b), h.count)
	}
	return rules, h.node, refused, bad, nil
}
