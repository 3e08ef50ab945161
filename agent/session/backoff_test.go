package session

import (
	"testing"
	"time"
)

func TestBackoffBoundsAndSpread(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	for i := range 40 {
		ceil := min(time.Duration(100<<i)*time.Millisecond, time.Second)
		if i > 20 {
			ceil = time.Second
		}
		if d := b.Next(); d < 0 || d > ceil {
			t.Fatalf("attempt %d: delay %s outside [0, %s]", i, d, ceil)
		}
	}
	// Full jitter: many agents at the cap spread over the whole window.
	var lo, hi int
	for range 1000 {
		d := b.Next()
		if d < 250*time.Millisecond {
			lo++
		}
		if d > 750*time.Millisecond {
			hi++
		}
	}
	if lo < 150 || hi < 150 {
		t.Fatalf("delays not spread across the window: %d below 250ms, %d above 750ms of 1000", lo, hi)
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset delay %s, want ≤ base", d)
	}
}
