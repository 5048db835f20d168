package comet

import (
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

func BenchmarkWriteReceipt(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		writeReceipt(w, newRequestVars(caddy.NewReplacer()), Receipt{Cursor: Cursor{Epoch: "k3x9a0b1c2", ID: 12345}, Woken: 3})
	}
}

// TestReceiptJSONIsEncodingJSONs: the receipt written by hand is what
// encoding/json writes for the receipt type.
func TestReceiptJSONIsEncodingJSONs(t *testing.T) {
	for _, rcpt := range []Receipt{
		{Cursor: Cursor{Epoch: "k3x9a0b1c2", ID: 12345}, Woken: 3},
		{Cursor: Cursor{Epoch: "z", ID: 18446744073709551615}},
	} {
		want, _ := json.Marshal(receipt{ID: rcpt.Cursor.ID, Cursor: rcpt.Cursor.String(), Woken: rcpt.Woken})
		if got := string(appendReceipt(nil, rcpt)); got != string(want)+"\n" {
			t.Errorf("%+v: %q, want %q", rcpt, got, want)
		}
	}
}
