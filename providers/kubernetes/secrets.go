package kubernetes

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// maxSecretBytes bounds one Secret's data, as the API server does.
const maxSecretBytes = 1 << 20

// checkSecretFile validates a file name a secret's data names: a relative
// path below secrets_dir without "..".
func checkSecretFile(name string) error {
	if name == "" || !filepath.IsLocal(name) || strings.Contains(name, `\`) {
		return fmt.Errorf("must be a file name relative to secrets_dir (no \"..\", not absolute), got %q", name)
	}
	return nil
}

// readSecretFile reads a file below dir through os.Root, so neither ".."
// nor a symbolic link leads out of it. Errors name the file, never its
// content.
func readSecretFile(root *os.Root, name string) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read %s in secrets_dir: %w", name, unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s in secrets_dir: %w", name, unwrapPath(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s in secrets_dir is not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s in secrets_dir: %w", name, unwrapPath(err))
	}
	if len(b) > maxSecretBytes {
		return nil, fmt.Errorf("%s in secrets_dir is larger than 1 MiB", name)
	}
	return b, nil
}

// openSecretsDir opens secrets_dir as an os.Root.
func (s *settings) openSecretsDir() (*os.Root, error) {
	if s.SecretsDir == "" {
		return nil, errors.New("config.secrets_dir is not set, so no secret can be read")
	}
	root, err := os.OpenRoot(s.SecretsDir)
	if err != nil {
		return nil, fmt.Errorf("secrets_dir %s: %w", s.SecretsDir, unwrapPath(err))
	}
	return root, nil
}
