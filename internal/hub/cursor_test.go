package hub

import "testing"

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
