package comet

import (
	"testing"
)

func TestParseETag(t *testing.T) {
	for in, want := range map[string]Cursor{
		`"abc:3"`:            {Epoch: "abc", ID: 3},
		`W/"abc:3"`:          {Epoch: "abc", ID: 3},
		` "abc:3" , "def:4"`: {Epoch: "abc", ID: 3},
	} {
		got, err := parseETag(in)
		if err != nil || got != want {
			t.Errorf("parseETag(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{`*`, `abc:3`, `"abc:3`, `""`, `W/`} {
		if c, err := parseETag(in); err == nil {
			t.Errorf("parseETag(%q) = %v, want an error", in, c)
		}
	}
}

// FuzzParseCursor checks that parsing never panics and that whatever parses
// prints back as the same text, so a cursor survives a round trip through
// a client unchanged.
func FuzzParseCursor(f *testing.F) {
	for _, seed := range []string{"abc:0", "k3x9a0b1c2:17", "", ":", "a:01", "a:-1", "W/\"a:1\"", "z:18446744073709551615"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCursor(s)
		if err == nil && c.String() != s {
			t.Fatalf("ParseCursor(%q) = %v, which prints as %q", s, c, c.String())
		}
		_, _ = parseETag(s)
	})
}
