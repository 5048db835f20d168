package redisbroker

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterReloader has a Redis Cluster client reload its map of slots when
// a command cannot reach the node that held them. go-redis otherwise
// keeps sending a dead master's slots to it until its periodic reload, a
// minute later, long after a replica took them over: every publish to
// those contexts would fail for that minute.
type clusterReloader struct {
	client *redis.ClusterClient
	last   atomic.Int64 // Unix nanoseconds of the last reload asked for
}

// clusterReloadEvery bounds how often failures ask for a reload.
const clusterReloadEvery = 250 * time.Millisecond

func watchClusterFailures(client redis.UniversalClient) {
	if cc, ok := client.(*redis.ClusterClient); ok {
		cc.AddHook(&clusterReloader{client: cc})
	}
}

func (h *clusterReloader) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *clusterReloader) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.after(err)
		return err
	}
}

func (h *clusterReloader) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.after(err)
		return err
	}
}

// after asks for a reload, in the background, when err says a node could
// not be reached or the cluster is changing its mind.
func (h *clusterReloader) after(err error) {
	if !nodeUnreachable(err) {
		return
	}
	now := time.Now().UnixNano()
	last := h.last.Load()
	if now-last < int64(clusterReloadEvery) || !h.last.CompareAndSwap(last, now) {
		return
	}
	go h.client.ReloadState(context.Background())
}

func nodeUnreachable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return strings.HasPrefix(rerr.Error(), "CLUSTERDOWN") || strings.HasPrefix(rerr.Error(), "TRYAGAIN")
	}
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "EOF")
}

// clusterSlots is how many hash slots a Redis Cluster has.
const clusterSlots = 16384

// SlotOf is the Redis Cluster hash slot of a key or shard channel: the
// CRC16 (XMODEM) of its hash tag, or of the whole name without one, as
// the cluster specification defines it. go-redis computes the same in a
// package of its own that cannot be imported.
func SlotOf(name string) int {
	if start := strings.IndexByte(name, '{'); start >= 0 {
		if end := strings.IndexByte(name[start+1:], '}'); end > 0 {
			name = name[start+1 : start+1+end]
		}
	}
	return int(crc16(name) % clusterSlots)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, no reflection, zero start).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
