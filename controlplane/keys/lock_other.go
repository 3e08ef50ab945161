//go:build !unix

package keys

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// lockDir only creates dir/keys.lock on systems without flock: do not rotate
// keys there while the control plane runs.
func lockDir(ctx context.Context, dir string) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keys: lock: %w", err)
	}
	return func() { f.Close() }, nil
}
