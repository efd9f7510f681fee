package api

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// Entries are encoded and decoded by hand on the list path: a million of them through
// encoding/json's reflection take seconds on both ends. The output is byte for byte what
// encoding/json writes for Entry (TestEntryJSONMatchesEncodingJSON), and decoding falls back to
// encoding/json for anything it does not expect.

// AppendEntryJSON appends e as encoding/json would: compact when indent is "", else as
// json.MarshalIndent(e, prefix, indent) would.
func AppendEntryJSON(dst []byte, e *Entry, prefix, indent string) []byte {
	first := true
	key := func(k string) {
		if first {
			dst = append(dst, '{')
			first = false
		} else {
			dst = append(dst, ',')
		}
		if indent != "" {
			dst = append(dst, '\n')
			dst = append(dst, prefix...)
			dst = append(dst, indent...)
		}
		dst = append(dst, '"')
		dst = append(dst, k...)
		dst = append(dst, '"', ':')
		if indent != "" {
			dst = append(dst, ' ')
		}
	}
	key("prefix")
	dst = appendJSONString(dst, e.Prefix)
	if e.Reason != "" {
		key("reason")
		dst = appendJSONString(dst, e.Reason)
	}
	key("origin")
	dst = appendJSONString(dst, e.Origin)
	key("created")
	dst = appendJSONTime(dst, e.Created)
	if !e.Expires.IsZero() {
		key("expires")
		dst = appendJSONTime(dst, e.Expires)
	}
	key("permanent")
	dst = strconv.AppendBool(dst, e.Permanent)
	key("offences")
	dst = strconv.AppendInt(dst, int64(e.Offences), 10)
	key("hits")
	dst = strconv.AppendUint(dst, e.Hits, 10)
	if !e.LastHit.IsZero() {
		key("last_hit")
		dst = appendJSONTime(dst, e.LastHit)
	}
	if indent != "" {
		dst = append(dst, '\n')
		dst = append(dst, prefix...)
	}
	return append(dst, '}')
}

// appendJSONString appends s quoted; anything encoding/json would escape goes through it.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendJSONTime(dst []byte, t time.Time) []byte {
	b, err := t.MarshalJSON()
	if err != nil { // a year outside 0-9999: what encoding/json would refuse anyway
		return append(dst, `null`...)
	}
	return append(dst, b...)
}

// DecodeEntryJSON decodes one compact JSON object of an Entry.
func DecodeEntryJSON(b []byte, e *Entry) error {
	if decodeEntryFast(b, e) {
		return nil
	}
	*e = Entry{}
	return json.Unmarshal(b, e)
}

// decodeEntryFast decodes the flat objects AppendEntryJSON writes; false for anything else
// (escapes, unknown keys, other spacing), which encoding/json then handles.
func decodeEntryFast(b []byte, e *Entry) bool {
	*e = Entry{}
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	b = b[1 : len(b)-1]
	for len(b) > 0 {
		if b[0] != '"' {
			return false
		}
		end := bytes.IndexByte(b[1:], '"')
		if end < 0 || len(b) < end+3 || b[end+2] != ':' {
			return false
		}
		k := b[1 : end+1]
		b = b[end+3:]
		var v []byte
		var str bool
		if len(b) > 0 && b[0] == '"' {
			end := bytes.IndexByte(b[1:], '"')
			if end < 0 {
				return false
			}
			v, str = b[1:end+1], true
			for _, c := range v {
				if c == '\\' || c >= utf8.RuneSelf { // escapes, and UTF-8 to validate: encoding/json
					return false
				}
			}
			b = b[end+2:]
		} else {
			end := bytes.IndexByte(b, ',')
			if end < 0 {
				end = len(b)
			}
			v, b = b[:end], b[end:]
		}
		if len(b) > 0 {
			if b[0] != ',' {
				return false
			}
			b = b[1:]
		}
		var err error
		switch string(k) {
		case "prefix", "reason", "origin":
			if !str {
				return false
			}
			switch string(k) {
			case "prefix":
				e.Prefix = string(v)
			case "reason":
				e.Reason = string(v)
			default:
				e.Origin = internOrigin(v)
			}
		case "created", "expires", "last_hit":
			if !str {
				return false
			}
			var t time.Time
			if err = t.UnmarshalText(v); err != nil {
				return false
			}
			switch string(k) {
			case "created":
				e.Created = t
			case "expires":
				e.Expires = t
			default:
				e.LastHit = t
			}
		case "permanent":
			if str {
				return false
			}
			e.Permanent, err = strconv.ParseBool(string(v))
		case "offences":
			if str {
				return false
			}
			var n int64
			n, err = strconv.ParseInt(string(v), 10, 0)
			e.Offences = int(n)
		case "hits":
			if str {
				return false
			}
			e.Hits, err = strconv.ParseUint(string(v), 10, 64)
		default:
			return false
		}
		if err != nil {
			return false
		}
	}
	return true
}

// internOrigin returns the origin as one shared string (a million entries, three origins).
func internOrigin(v []byte) string {
	for _, o := range [...]string{OriginManual, OriginTrap, OriginImport} {
		if string(v) == o {
			return o
		}
	}
	return string(v)
}
