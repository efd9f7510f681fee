package main

import (
	"fmt"
	"strconv"
	"strings"
)

// table is one markdown table of the report.
type table struct {
	title  string
	notes  []string
	header []string
	rows   [][]string
}

func newTable(title string, header ...string) *table {
	return &table{title: title, header: header}
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

// markdown renders the table; numeric-looking columns are right-aligned.
func (t *table) markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "### %s\n\n", t.title)
	for _, n := range t.notes {
		sb.WriteString(n + "\n\n")
	}
	if len(t.rows) == 0 {
		sb.WriteString("(no rows)\n\n")
		return sb.String()
	}
	sb.WriteString("| " + strings.Join(t.header, " | ") + " |\n|")
	for i := range t.header {
		if i > 0 && numericColumn(t.rows, i) {
			sb.WriteString("--:|")
		} else {
			sb.WriteString("---|")
		}
	}
	sb.WriteString("\n")
	for _, r := range t.rows {
		for len(r) < len(t.header) {
			r = append(r, "")
		}
		sb.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	sb.WriteString("\n")
	return sb.String()
}

func numericColumn(rows [][]string, col int) bool {
	n := 0
	for _, r := range rows {
		if col >= len(r) || r[col] == "" || r[col] == "n/a" || r[col] == "-" {
			continue
		}
		v := strings.NewReplacer(",", "", "%", "", "x", "", "±", "", " ms", "", " s", "", " MB", "").Replace(r[col])
		if _, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
			return false
		}
		n++
	}
	return n > 0
}

// num formats n with thousands separators.
func num(n float64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprintf("%.0f", n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "**MISS**"
}
