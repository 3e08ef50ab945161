package svid

import (
	"os"
	"path/filepath"
	"testing"

	"attache.dev/attache/internal/securefile"
)

func TestSaveTrustRoot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, TrustRootFile)
	if err := os.WriteFile(path, []byte("v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &State{Dir: dir, TrustRoot: []byte("v1")}
	env := []byte(`{"payloadType":"v2"}`)
	if err := s.SaveTrustRoot(env); err != nil {
		t.Fatal(err)
	}
	env[0] = 'X' // the state keeps its own copy
	got, err := securefile.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"payloadType":"v2"}` || string(s.TrustRoot) != `{"payloadType":"v2"}` {
		t.Fatalf("file %q, TrustRoot %q", got, s.TrustRoot)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", fi.Mode().Perm())
	}

	if err := s.SaveTrustRoot(nil); err == nil {
		t.Fatal("empty envelope saved")
	}

	mem := &State{TrustRoot: []byte("v1")}
	if err := mem.SaveTrustRoot([]byte("v2")); err != nil || string(mem.TrustRoot) != "v2" {
		t.Fatalf("in-memory state: %q, %v", mem.TrustRoot, err)
	}

	gone := &State{Dir: filepath.Join(dir, "missing"), TrustRoot: []byte("v1")}
	if err := gone.SaveTrustRoot([]byte("v2")); err == nil || string(gone.TrustRoot) != "v1" {
		t.Fatalf("unwritable dir: TrustRoot %q, err %v; want the old root kept and an error", gone.TrustRoot, err)
	}
}
