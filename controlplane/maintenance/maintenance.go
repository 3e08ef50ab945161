// Package maintenance is tenants' weekly maintenance windows: parsing the
// operator's form ("sat,sun 02:00+4h Europe/Paris"), validating stored
// windows (store.Window) and telling whether a time falls in one, in the
// window's own time zone (so a window at 02:00 Paris time stays at 02:00
// across daylight-saving changes).
//
// Imported by the ops API (validation) and the rollout driver.
package maintenance

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/controlplane/store"
)

// MaxWindows is how many windows a tenant may have.
const MaxWindows = 16

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Parse reads "DAYS HH:MM+DURATION [TZ]": DAYS is "daily", a day ("mon"), a
// comma list ("sat,sun") or a range ("mon-fri"); DURATION a Go duration up
// to 7 days; TZ an IANA zone (default UTC).
func Parse(s string) (store.Window, error) {
	f := strings.Fields(s)
	if len(f) < 2 || len(f) > 3 {
		return store.Window{}, fmt.Errorf("window %q: want \"DAYS HH:MM+DURATION [TIME_ZONE]\", e.g. \"sat,sun 02:00+4h Europe/Paris\"", s)
	}
	start, dur, ok := strings.Cut(f[1], "+")
	if !ok {
		return store.Window{}, fmt.Errorf("window %q: %q needs a duration after '+', e.g. 02:00+4h", s, f[1])
	}
	w := store.Window{Start: start, Duration: dur}
	if len(f) == 3 {
		w.TimeZone = f[2]
	}
	days, err := parseDays(f[0])
	if err != nil {
		return store.Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	w.Days = days
	if err := Validate(w); err != nil {
		return store.Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	return w, nil
}

func parseDays(s string) ([]string, error) {
	if s == "daily" || s == "*" {
		return nil, nil
	}
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		from, to, isRange := strings.Cut(part, "-")
		a := slices.Index(dayNames, strings.ToLower(from))
		if a < 0 {
			return nil, fmt.Errorf("day %q: want one of %s or \"daily\"", from, strings.Join(dayNames, ", "))
		}
		b := a
		if isRange {
			b = slices.Index(dayNames, strings.ToLower(to))
			if b < 0 {
				return nil, fmt.Errorf("day %q: want one of %s", to, strings.Join(dayNames, ", "))
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			if !slices.Contains(out, dayNames[d]) {
				out = append(out, dayNames[d])
			}
			if d == b {
				break
			}
		}
	}
	return out, nil
}

// Validate checks a stored window; errors name the field.
func Validate(w store.Window) error {
	for _, d := range w.Days {
		if !slices.Contains(dayNames, d) {
			return fmt.Errorf("days: %q is not one of %s", d, strings.Join(dayNames, ", "))
		}
	}
	if _, err := clock(w.Start); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	d, err := time.ParseDuration(w.Duration)
	if err != nil {
		return fmt.Errorf("duration: %q is not a duration like 4h or 90m", w.Duration)
	}
	if d < time.Minute || d > 7*24*time.Hour {
		return fmt.Errorf("duration: %s is outside 1m..168h", d)
	}
	if _, err := location(w.TimeZone); err != nil {
		return fmt.Errorf("time_zone: %w", err)
	}
	return nil
}

// ValidateAll checks a tenant's windows; errors name the window's index.
func ValidateAll(ws []store.Window) error {
	if len(ws) > MaxWindows {
		return fmt.Errorf("windows: %d windows, limit %d", len(ws), MaxWindows)
	}
	var errs []error
	for i, w := range ws {
		if err := Validate(w); err != nil {
			errs = append(errs, fmt.Errorf("windows[%d].%w", i, err))
		}
	}
	return errors.Join(errs...)
}

func clock(s string) (time.Duration, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(h) != 2 || len(m) != 2 || hh > 23 || mm > 59 || hh < 0 || mm < 0 {
		return 0, fmt.Errorf("%q is not a time of day HH:MM (24-hour)", s)
	}
	return time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute, nil
}

func location(tz string) (*time.Location, error) {
	if tz == "" || tz == "UTC" {
		return time.UTC, nil
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("%q is not a known IANA time zone", tz)
	}
	return loc, nil
}

// Open reports whether t falls in any of ws (no windows: always open) and,
// when it does not, when the next one opens (within 8 days).
func Open(ws []store.Window, t time.Time) (bool, time.Time) {
	if len(ws) == 0 {
		return true, t
	}
	var next time.Time
	for _, w := range ws {
		in, n := openIn(w, t)
		if in {
			return true, t
		}
		if !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return false, next
}

// openIn checks one window: the starts on the days before t (a window may
// run past midnight, up to 7 days) and the next start after t.
func openIn(w store.Window, t time.Time) (bool, time.Time) {
	loc, err := location(w.TimeZone)
	if err != nil {
		return false, time.Time{}
	}
	off, err := clock(w.Start)
	if err != nil {
		return false, time.Time{}
	}
	dur, err := time.ParseDuration(w.Duration)
	if err != nil {
		return false, time.Time{}
	}
	lt := t.In(loc)
	midnight := time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, loc)
	var next time.Time
	for back := -8; back <= 8; back++ {
		day := midnight.AddDate(0, 0, back)
		if len(w.Days) > 0 && !slices.Contains(w.Days, dayNames[day.Weekday()]) {
			continue
		}
		start := time.Date(day.Year(), day.Month(), day.Day(), int(off/time.Hour), int(off%time.Hour/time.Minute), 0, 0, loc)
		if !t.Before(start) && t.Before(start.Add(dur)) {
			return true, t
		}
		if start.After(t) && next.IsZero() {
			next = start
		}
	}
	return false, next
}

// Format is the operator's form of w, as Parse reads it.
func Format(w store.Window) string {
	days := "daily"
	if len(w.Days) > 0 {
		days = strings.Join(w.Days, ",")
	}
	s := days + " " + w.Start + "+" + w.Duration
	if w.TimeZone != "" {
		s += " " + w.TimeZone
	}
	return s
}
