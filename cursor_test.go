package comet

import (
	"testing"
)

func TestParseCursor(t *testing.T) {
	good := map[string]Cursor{
		"abc:0":                  {Epoch: "abc", ID: 0},
		"k3x9a0b1c2:17":          {Epoch: "k3x9a0b1c2", ID: 17},
		"z:18446744073709551615": {Epoch: "z", ID: 18446744073709551615},
	}
	for in, want := range good {
		got, err := ParseCursor(in)
		if err != nil || got != want {
			t.Errorf("ParseCursor(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("String() = %q, want %q", got.String(), in)
		}
	}
	bad := []string{
		"", "17", ":17", "abc:", "abc:-1", "abc:+1", "abc:01", "ABC:1", "a b:1",
		"abc:1:2", "abc:18446744073709551616", "abc:1x", "0123456789012345678901234567890123:1",
	}
	for _, in := range bad {
		if c, err := ParseCursor(in); err == nil {
			t.Errorf("ParseCursor(%q) = %v, want an error", in, c)
		}
	}
}

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
