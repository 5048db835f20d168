package redisbroker

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestSlotOf checks slots against what Redis' CLUSTER KEYSLOT answers.
func TestSlotOf(t *testing.T) {
	for name, want := range map[string]int{
		"":                        0,
		"123456789":               12739, // CRC-16/XMODEM's check value 0x31C3
		"{a}x":                    15495,
		"{b}x":                    3300,
		"foo":                     12182,
		"{user1000}.following":    3443,
		"{}x":                     SlotOf("{}x"), // empty tag: the whole name
		"comet:{h:/rooms/a}:e":    SlotOf("h:/rooms/a"),
		"no}tag{here":             SlotOf("no}tag{here"),
		"{user1000}.followers{x}": 3443,
	} {
		if got := SlotOf(name); got != want {
			t.Errorf("SlotOf(%q) = %d, want %d", name, got, want)
		}
	}
	if SlotOf("{}x") == SlotOf("") {
		t.Error("an empty hash tag must hash the whole name")
	}
}

// replyError is an error answer from Redis, as go-redis returns them.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

var _ redis.Error = replyError("")

func TestMovedSlot(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{replyError("MOVED 3999 127.0.0.1:6381"), 3999},
		{replyError("ASK 12 127.0.0.1:6381"), 12},
		{replyError("MOVED x 127.0.0.1:6381"), -1},
		{replyError("MOVED 16384 127.0.0.1:6381"), -1},
		{replyError("CROSSSLOT Keys in request don't hash to the same slot"), -1},
		{errors.New("MOVED 12 127.0.0.1:6381"), -1}, // not from Redis
		{nil, -1},
	} {
		if got := movedSlot(c.err); got != c.want {
			t.Errorf("movedSlot(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
