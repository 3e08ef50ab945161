//go:build unix

package keys

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockRetry is how often lockDir tries again while another process (or
// another load in this one) holds the lock.
const lockRetry = 20 * time.Millisecond

// lockDir takes an exclusive flock on dir/keys.lock, waiting until it is free
// or ctx ends. The lock is released by the returned function or when the
// process exits, so a crash never leaves it held.
func lockDir(ctx context.Context, dir string) (func(), error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keys: lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("keys: lock %s: %w", path, err)
		}
		t := time.NewTimer(lockRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("keys: waiting for %s (held by a key rotation or the control plane reloading its keys): %w", path, ctx.Err())
		case <-t.C:
		}
	}
}
