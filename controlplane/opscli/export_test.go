package opscli

import "time"

// SetPlanPollInterval makes --wait poll faster in tests; it returns the
// function that restores the default.
func SetPlanPollInterval(d time.Duration) (restore func()) {
	old := planPollInterval
	planPollInterval = d
	return func() { planPollInterval = old }
}
