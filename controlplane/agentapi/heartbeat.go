package agentapi

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"attache.dev/attache/controlplane/store"
)

const (
	flushInterval = time.Second
	maxBatch      = 5000
)

// batcher coalesces heartbeats (latest per agent wins) and queues session
// openings and closings, and writes them to the store in one transaction each
// per flush, so thousands of agents — or a whole fleet reconnecting after a
// restart — cost a handful of commits per second.
type batcher struct {
	store  store.Store
	logger *slog.Logger

	mu       sync.Mutex
	pending  map[store.AgentKey]store.Heartbeat
	sessions []store.SessionUpdate
	full     chan struct{}
}

func newBatcher(s store.Store, logger *slog.Logger) *batcher {
	return &batcher{store: s, logger: logger, pending: make(map[store.AgentKey]store.Heartbeat), full: make(chan struct{}, 1)}
}

func (b *batcher) add(h store.Heartbeat) {
	b.mu.Lock()
	if prev, ok := b.pending[h.AgentKey]; ok && h.Health == nil {
		h.Health = prev.Health
	}
	b.pending[h.AgentKey] = h
	n := len(b.pending)
	b.mu.Unlock()
	b.kick(n)
}

// session queues a session opening or closing; order is kept.
func (b *batcher) session(u store.SessionUpdate) {
	b.mu.Lock()
	b.sessions = append(b.sessions, u)
	n := len(b.sessions)
	b.mu.Unlock()
	b.kick(n)
}

func (b *batcher) kick(n int) {
	if n >= maxBatch {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
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
	sessions := b.sessions
	b.sessions = nil
	var beats []store.Heartbeat
	if len(b.pending) > 0 {
		beats = make([]store.Heartbeat, 0, len(b.pending))
		for _, h := range b.pending {
			beats = append(beats, h)
		}
		b.pending = make(map[store.AgentKey]store.Heartbeat, len(beats))
	}
	b.mu.Unlock()
	// Sessions first: a heartbeat never precedes the opening it belongs to.
	if err := b.store.RecordSessions(ctx, sessions); err != nil {
		b.logger.Warn("record sessions", "count", len(sessions), "err", err)
	}
	if len(beats) > 0 {
		if err := b.store.RecordHeartbeats(ctx, beats); err != nil {
			b.logger.Warn("record heartbeats", "count", len(beats), "err", err)
		}
	}
}
