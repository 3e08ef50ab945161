package securefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReadModes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	if err := Write(p, []byte("secret")); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if err := Write(p, []byte("replaced")); err != nil {
		t.Fatal(err)
	}
	b, err := Read(p)
	if err != nil || string(b) != "replaced" {
		t.Fatalf("Read = %q, %v", b, err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p); !errors.Is(err, ErrTooOpen) {
		t.Fatalf("Read of a 0640 file = %v, want ErrTooOpen", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestCreateNeverOverwrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := Create(p, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := Create(p, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v, want ErrExist", err)
	}
	b, _ := Read(p)
	if string(b) != "first" {
		t.Fatalf("content %q, want first", b)
	}
}
