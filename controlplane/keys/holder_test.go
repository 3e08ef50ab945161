package keys

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startHolder(t *testing.T, dir string) (*Holder, *syncBuffer) {
	t.Helper()
	var logs syncBuffer
	h := NewHolder(mustLoad(t, dir, testNow), dir, "example.org", slog.New(slog.NewTextHandler(&logs, nil)))
	h.interval = 5 * time.Millisecond
	h.now = func() time.Time { return testNow }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return h, &logs
}

func TestHolderReloadsAfterRotation(t *testing.T) {
	dir := setup(t)
	h, logs := startHolder(t, dir)
	v1 := h.Current()

	v2, err := RotatePlans(context.Background(), dir, "example.org", testNow)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the holder to load version 2", func() bool { return h.Current().Root.Version == 2 })
	cur := h.Current()
	if cur.PlanSigner.KeyID() != v2.PlanSigner.KeyID() || cur.RootHash() != v2.RootHash() {
		t.Error("holder holds other material than the rotation produced")
	}
	if len(cur.RootChain(1)) != 1 {
		t.Error("reloaded material has no history")
	}
	if v1.Root.Version != 1 {
		t.Error("the previous Material was modified")
	}

	if _, err := RotateRoot(context.Background(), dir, "example.org", testNow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the holder to load version 3", func() bool { return h.Current().Root.Version == 3 })
	if !strings.Contains(logs.String(), "signing keys reloaded after a rotation") {
		t.Errorf("no reload logged:\n%s", logs)
	}
}

func TestHolderKeepsMaterialOnBadReload(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{
		{"root.json tampered", func(t *testing.T, dir string) {
			p := filepath.Join(dir, RootFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"sig":"`, `"sig":"AAAA`, 1)), 0o600)
		}, "root role needs 1 signature"},
		{"another control plane's keys", func(t *testing.T, dir string) {
			// A complete, consistent data dir that does not follow the root in use.
			other := setup(t)
			for _, name := range []string{RootKeyFile, PlansKeyFile, ReleaseKeyFile, RootFile, filepath.Join(RootsDir, "1.json")} {
				b, err := os.ReadFile(filepath.Join(other, name))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(dir, name), b, 0o600)
			}
		}, "does not follow version 1 in use; restart the control plane to use it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := setup(t)
			h, logs := startHolder(t, dir)
			before := h.Current()
			tt.mutate(t, dir)
			waitFor(t, "an error to be logged", func() bool { return strings.Contains(logs.String(), tt.want) })
			if h.Current() != before {
				t.Error("material replaced by a bad reload")
			}
			time.Sleep(50 * time.Millisecond)
			if n := strings.Count(logs.String(), "were not reloaded"); n != 1 {
				t.Errorf("error logged %d times, want once:\n%s", n, logs)
			}
		})
	}
}
