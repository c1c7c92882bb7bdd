// Package labels makes names from outside safe as Prometheus label values.
package labels

import (
	"strings"
	"unicode/utf8"
)

// MaxLen bounds a label value, in bytes: names come from whoever deploys a
// workload or names a process, and a scrape must stay small.
const MaxLen = 256

// Value replaces invalid UTF-8 (command names are bytes, and client_golang
// refuses invalid UTF-8) and cuts v to MaxLen bytes on a character boundary.
func Value(v string) string {
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "\uFFFD")
	}
	if len(v) <= MaxLen {
		return v
	}
	cut := MaxLen
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut]
}
