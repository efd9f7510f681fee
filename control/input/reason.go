package input

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxReasonLen is the longest reason a block may carry, in bytes. A reason is kept with every
// entry it applies to (an import's with each of its lines) and shown in one column of a table.
const MaxReasonLen = 256

// MaxImportNameLen bounds an import's name (the file name snarectl sends): a path, at most
// PATH_MAX bytes.
const MaxImportNameLen = 4096

// CheckReason refuses a reason that is longer than MaxReasonLen bytes, is not UTF-8, or holds a
// control character (a newline would forge a row in a table, an escape sequence would reach the
// operator's terminal) or a bidirectional override (which reorders the text around it).
func CheckReason(s string) error {
	return CheckText("reason", s, MaxReasonLen)
}

// CheckText refuses free text that is longer than limit bytes or that a terminal would not show
// as the text it is; what names it in the message.
func CheckText(what, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%s is %d bytes long: at most %d allowed", what, len(s), limit)
	}
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !isRuneError(s[i:]):
			return fmt.Errorf("%s %s is not valid UTF-8 (byte %d)", what, QuoteInput(s), i)
		case unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r):
			return fmt.Errorf("%s %s holds the control character %U at byte %d: not allowed", what, QuoteInput(s), r, i)
		}
	}
	return nil
}

// isRuneError tells whether s starts with an encoded U+FFFD (valid UTF-8) rather than a bad byte.
func isRuneError(s string) bool {
	_, size := utf8.DecodeRuneInString(s)
	return size == 3
}
