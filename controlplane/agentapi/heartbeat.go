package agentapi

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"attache.dev/attache/controlplane/store"
)

// errReplaced is the cancel cause of a session superseded by a newer one.
var errReplaced = errors.New("session replaced by a newer session of the same agent")

const (
	flushInterval = time.Second
	maxBatch      = 5000
)

// batcher coalesces heartbeats (latest per agent wins) and writes them to the
// store in one transaction per flush, so thousands of agents cost a handful
// of writes per second.
type batcher struct {
	store  store.Store
	logger *slog.Logger

	mu      sync.Mutex
	pending map[store.AgentKey]store.Heartbeat
	full    chan struct{}
}

func newBatcher(s store.Store, logger *slog.Logger) *batcher {
	return &batcher{store: s, logger: logger, pending: make(map[store.AgentKey]store.Heartbeat), full: make(chan struct{}, 1)}
}

func (b *batcher) add(ctx context.Context, h store.Heartbeat) error {
	b.mu.Lock()
	if prev, ok := b.pending[h.AgentKey]; ok && h.Health == nil {
		h.Health = prev.Health
	}
	b.pending[h.AgentKey] = h
	n := len(b.pending)
	b.mu.Unlock()
	if n >= maxBatch {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	return nil
}

// Run flushes until ctx ends, then flushes once more.
func (b *batcher) Run(ctx context.Context) error {
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			b.flush(context.WithoutCancel(ctx))
			return nil
		case <-t.C:
		case <-b.full:
		}
		b.flush(ctx)
	}
}

func (b *batcher) flush(ctx context.Context) {
	b.mu.Lock()
	if len(b.pending) == 0 {
		b.mu.Unlock()
		return
	}
	batch := make([]store.Heartbeat, 0, len(b.pending))
	for _, h := range b.pending {
		batch = append(batch, h)
	}
	b.pending = make(map[store.AgentKey]store.Heartbeat, len(batch))
	b.mu.Unlock()
	if err := b.store.RecordHeartbeats(ctx, batch); err != nil {
		b.logger.Warn("record heartbeats", "count", len(batch), "err", err)
	}
}
