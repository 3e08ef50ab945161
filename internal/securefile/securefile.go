// Package securefile reads and writes files that hold secrets (private keys,
// tokens): writes are atomic (temp file, fsync, rename) with mode 0600, and
// reads refuse a file that group or others can access.
//
// Imported by the control plane, the agent and the installer.
package securefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Write atomically replaces path with data, mode 0600.
func Write(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Create writes data to path with mode 0600 only if path does not exist yet.
// It reports fs.ErrExist (wrapped) when it does.
func Create(path string, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path) // never leave a half-written secret behind
			err = fmt.Errorf("create %s: %w", path, err)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

// ErrTooOpen is returned by Read for files group or others may access.
var ErrTooOpen = errors.New("file permissions too open")

// MaxSize bounds what Read and ReadPublic return.
const MaxSize = 1 << 20

// Read returns the contents of a secret file, refusing one whose mode lets
// group or others read or write it, one that is not a regular file, and one
// larger than MaxSize.
func Read(path string) ([]byte, error) { return read(path, 0o077) }

// ReadPublic returns the contents of a file that may be world-readable but
// must not be writable by group or others (a trust root, a CA certificate).
func ReadPublic(path string) ([]byte, error) { return read(path, 0o022) }

func read(path string, forbidden fs.FileMode) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&forbidden != 0 {
		what, want := "accessible", "600"
		if forbidden&0o044 == 0 {
			what, want = "writable", "644"
		}
		return nil, fmt.Errorf("%s is %s by group or others (mode %04o): %w; run chmod %s %s", path, what, perm, ErrTooOpen, want, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxSize)
	}
	return data, nil
}

// Exists reports whether path exists.
func Exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// MkdirAll creates dir with mode 0700 if missing.
func MkdirAll(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	return nil
}
