package opscli

import (
	"io"
	"time"
)

// SetRolloutPollInterval makes --watch poll faster in tests; it returns the
// function that restores the default.
func SetRolloutPollInterval(d time.Duration) (restore func()) {
	old := rolloutPollInterval
	rolloutPollInterval = d
	return func() { rolloutPollInterval = old }
}

// SetTerminal makes --watch treat stdout as a terminal (or not); it
// returns the function that restores the detection.
func SetTerminal(tty bool) (restore func()) {
	old := isTerminal
	isTerminal = func(io.Writer) bool { return tty }
	return func() { isTerminal = old }
}
