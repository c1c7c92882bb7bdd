package labels

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"web", "web"},
		{"a\"b\nc\\d", "a\"b\nc\\d"},
		{"bad\xff\xfe", "bad\uFFFD"},
		{strings.Repeat("é", 200), strings.Repeat("é", 128)},
	} {
		if got := Value(tc.in); got != tc.want {
			t.Errorf("Value(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzValue(f *testing.F) {
	f.Add("web")
	f.Add("\xff" + strings.Repeat("x", 300))
	f.Fuzz(func(t *testing.T, in string) {
		v := Value(in)
		if !utf8.ValidString(v) || len(v) > MaxLen {
			t.Errorf("Value(%q) = %q", in, v)
		}
	})
}
