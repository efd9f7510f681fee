package input

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ParsePorts parses a port list such as "1,11,32771-32774" (commas and/or spaces between items,
// inclusive ranges) into sorted, de-duplicated ports. An empty or blank list is no ports.
// Port 0, ports above 65535, reversed ranges and anything else malformed are errors naming the item.
func ParsePorts(s string) ([]uint16, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	var ports []uint16
	for _, f := range fields {
		lo, hi, isRange := strings.Cut(f, "-")
		first, err := ParsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port list %q: %q: %w", s, f, err)
		}
		last := first
		if isRange {
			if last, err = ParsePort(hi); err != nil {
				return nil, fmt.Errorf("port list %q: %q: %w", s, f, err)
			}
			if last < first {
				return nil, fmt.Errorf("port list %q: range %q is reversed", s, f)
			}
		}
		for p := int(first); p <= int(last); p++ {
			ports = append(ports, uint16(p))
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("not a port number")
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", n)
	}
	return uint16(n), nil
}

// FormatPorts writes ports in the compact form ParsePorts reads: sorted, runs of three or more
// consecutive ports as a range ("32771-32774"), shorter runs listed one by one ("12345,12346").
func FormatPorts(ports []uint16) string {
	ps := slices.Clone(ports)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	var b strings.Builder
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		switch {
		case j-i >= 2:
			fmt.Fprintf(&b, "%d-%d", ps[i], ps[j])
		case j == i:
			fmt.Fprintf(&b, "%d", ps[i])
		default:
			fmt.Fprintf(&b, "%d,%d", ps[i], ps[j])
		}
		i = j + 1
	}
	return b.String()
}
