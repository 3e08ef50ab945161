package session

import (
	"math/rand/v2"
	"time"
)

// Backoff is capped exponential backoff with full jitter: each delay is
// uniform in [0, min(Max, Base·2ⁿ)]. Full jitter spreads a fleet that lost
// its control plane at the same instant over the whole window, so a restart
// is not met by a thundering herd.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
	n    int
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	ceil := b.Base << min(b.n, 30)
	if ceil <= 0 || ceil > b.Max {
		ceil = b.Max
	}
	b.n++
	return rand.N(ceil + 1)
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.n = 0 }
