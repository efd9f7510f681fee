package api

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// readLines hands over lines of any length, short ones from the buffer, and a last line
// without its newline.
func TestReadLines(t *testing.T) {
	long := strings.Repeat("y", 100)
	var got []string
	err := readLines(bytes.NewBufferString("a\n\n"+long+"\nb\n"+long), 16, func(l []byte) error {
		got = append(got, string(l))
		return nil
	})
	if want := []string{"a", long, "b", long}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("readLines: %q %v", got, err)
	}
}
