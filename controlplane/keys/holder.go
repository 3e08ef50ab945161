package keys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"attache.dev/attache/internal/securefile"
)

// PollInterval is how often a Holder looks at root.json.
const PollInterval = 2 * time.Second

// Holder holds the control plane's current Material and replaces it when a
// rotation (attache-controlplane keys rotate, another process) changes
// root.json, so the running control plane signs with the new keys and offers
// the new roots without a restart.
type Holder struct {
	dir, trustDomain string
	logger           *slog.Logger
	cur              atomic.Pointer[Material]

	// Set before Run, by tests.
	interval time.Duration
	now      func() time.Time
}

// NewHolder returns a Holder whose current Material is m, which was loaded
// from dir for trustDomain (LoadOrCreate). logger may be nil.
func NewHolder(m *Material, dir, trustDomain string, logger *slog.Logger) *Holder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Holder{dir: dir, trustDomain: trustDomain, logger: logger, interval: PollInterval, now: time.Now}
	h.cur.Store(m)
	return h
}

// Current returns the Material in use. It never returns nil if NewHolder got
// a non-nil Material. Callers read it once per operation (one plan signed with
// one key) and must not modify it.
func (h *Holder) Current() *Material { return h.cur.Load() }

// Run polls root.json every PollInterval until ctx ends, and when its content
// differs from the current Material's root, loads the material again (as
// LoadOrCreate does, under the same lock as a rotation, so it never sees a
// half-done one). The new Material replaces the current one only if its root
// is a later version that follows from the current one (sign.VerifyRootUpdate
// through roots/); a failed or refused reload keeps the current Material and
// logs an error, once per distinct problem. Run returns nil when ctx ends.
func (h *Holder) Run(ctx context.Context) error {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, err := h.check(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil:
			if msg := err.Error(); msg != lastErr {
				h.logger.Error("signing keys changed on disk but were not reloaded; still using the previous ones",
					"dir", h.dir, "root_version", h.Current().Root.Version, "err", err)
				lastErr = msg
			}
		default:
			lastErr = ""
		}
	}
}

// check reloads the material if root.json changed, and reports whether it
// replaced the current one.
func (h *Holder) check(ctx context.Context) (bool, error) {
	cur := h.Current()
	env, err := securefile.ReadPublic(filepath.Join(h.dir, RootFile))
	if err != nil {
		return false, err
	}
	if bytes.Equal(env, cur.RootEnvelope) {
		return false, nil
	}
	next, err := open(ctx, h.dir, h.trustDomain, h.now(), openOpts{})
	if err != nil {
		return false, err
	}
	if bytes.Equal(next.RootEnvelope, cur.RootEnvelope) {
		return false, nil // root.json changed back (or the lock waited out a rotation that was undone)
	}
	if err := follows(ctx, cur, next); err != nil {
		return false, fmt.Errorf("%s: %w; restart the control plane to use it", filepath.Join(h.dir, RootFile), err)
	}
	h.cur.Store(next)
	h.logger.Info("signing keys reloaded after a rotation",
		"root_version", next.Root.Version, "previous_root_version", cur.Root.Version,
		"root_key", next.RootSigner.KeyID(), "plans_key", next.PlanSigner.KeyID())
	return true, nil
}

// follows checks that next's root can be reached from cur's by the chain of
// root updates that agents will follow.
func follows(ctx context.Context, cur, next *Material) error {
	if next.Root.Version <= cur.Root.Version {
		return fmt.Errorf("trust root version %d does not follow version %d in use", next.Root.Version, cur.Root.Version)
	}
	chain := next.RootChain(cur.Root.Version)
	if len(chain) == 0 {
		return errors.New("no trust root history") // not reached: RootChain returns at least the current root
	}
	prev := cur.Root
	for _, env := range chain {
		r, err := verifyUpdateAnyTime(ctx, prev, env)
		if err != nil {
			return fmt.Errorf("trust root history from version %d in use: %w", cur.Root.Version, err)
		}
		prev = r
	}
	return nil
}
