package maintenance

import (
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    store.Window
		wantErr string
	}{
		{in: "sat,sun 02:00+4h Europe/Paris", want: store.Window{Days: []string{"sat", "sun"}, Start: "02:00", Duration: "4h", TimeZone: "Europe/Paris"}},
		{in: "mon-fri 22:30+90m", want: store.Window{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "22:30", Duration: "90m"}},
		{in: "fri-mon 23:00+1h", want: store.Window{Days: []string{"fri", "sat", "sun", "mon"}, Start: "23:00", Duration: "1h"}},
		{in: "daily 00:00+24h UTC", want: store.Window{Start: "00:00", Duration: "24h", TimeZone: "UTC"}},
		{in: "funday 02:00+1h", wantErr: `day "funday"`},
		{in: "sat 2:00+1h", wantErr: "start:"},
		{in: "sat 24:00+1h", wantErr: "start:"},
		{in: "sat 02:00", wantErr: "needs a duration"},
		{in: "sat 02:00+0s", wantErr: "duration:"},
		{in: "sat 02:00+200h", wantErr: "duration:"},
		{in: "sat 02:00+1h Mars/Olympus", wantErr: "time_zone:"},
		{in: "sat", wantErr: "want \"DAYS"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if Format(got) != Format(tt.want) {
				t.Fatalf("Parse = %s, want %s", Format(got), Format(tt.want))
			}
		})
	}
}

func TestOpen(t *testing.T) {
	paris, _ := time.LoadLocation("Europe/Paris")
	weekend, _ := Parse("sat,sun 02:00+4h Europe/Paris")
	night, _ := Parse("fri 23:00+3h") // runs past midnight into saturday
	tests := []struct {
		name     string
		ws       []store.Window
		at       time.Time
		open     bool
		nextOpen time.Time
	}{
		{"no windows", nil, time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), true, time.Time{}},
		{"inside, local time", []store.Window{weekend}, time.Date(2026, 11, 28, 3, 0, 0, 0, paris), true, time.Time{}},
		{"same instant in UTC", []store.Window{weekend}, time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC), true, time.Time{}},
		{"before, on the day", []store.Window{weekend}, time.Date(2026, 11, 28, 1, 59, 0, 0, paris), false, time.Date(2026, 11, 28, 2, 0, 0, 0, paris)},
		{"end is exclusive", []store.Window{weekend}, time.Date(2026, 11, 28, 6, 0, 0, 0, paris), false, time.Date(2026, 11, 29, 2, 0, 0, 0, paris)},
		{"monday waits for saturday", []store.Window{weekend}, time.Date(2026, 11, 23, 12, 0, 0, 0, paris), false, time.Date(2026, 11, 28, 2, 0, 0, 0, paris)},
		{"past midnight", []store.Window{night}, time.Date(2026, 11, 28, 1, 0, 0, 0, time.UTC), true, time.Time{}},
		{"after it closed", []store.Window{night}, time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC), false, time.Date(2026, 12, 4, 23, 0, 0, 0, time.UTC)},
		{"any of several", []store.Window{weekend, night}, time.Date(2026, 11, 27, 23, 30, 0, 0, time.UTC), true, time.Time{}},
		// DST: on 2026-03-29 Paris moves from +01:00 to +02:00; 02:00 local
		// does not exist that night, and Go normalises it to 03:00.
		{"dst spring forward", []store.Window{weekend}, time.Date(2026, 3, 29, 3, 30, 0, 0, paris), true, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			open, next := Open(tt.ws, tt.at)
			if open != tt.open {
				t.Fatalf("Open = %v, want %v", open, tt.open)
			}
			if !tt.open && !next.Equal(tt.nextOpen) {
				t.Fatalf("next = %s, want %s", next, tt.nextOpen)
			}
		})
	}
}

func TestValidateAll(t *testing.T) {
	ws := []store.Window{{Start: "02:00", Duration: "1h"}, {Start: "25:00", Duration: "1h"}}
	if err := ValidateAll(ws); err == nil || !strings.Contains(err.Error(), "windows[1].start") {
		t.Fatalf("ValidateAll = %v", err)
	}
	many := make([]store.Window, MaxWindows+1)
	if err := ValidateAll(many); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("too many: %v", err)
	}
}
