package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/internal/securefile"
)

// clock is a settable test clock that advances a millisecond per reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func open(t testing.TB, path string, opts Options) *Spool {
	t.Helper()
	if opts.Now == nil {
		opts.Now = (&clock{t: t0}).now
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newSpool(t testing.TB, opts Options) (*Spool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	return open(t, path, opts), path
}

// recs returns n valid records whose values are base, base+1, ...
func recs(n int, base float64) []Record {
	out := make([]Record, n)
	for i := range out {
		out[i] = Record{
			Tenant: "acme",
			Meter:  []string{"requests", "errors", "latency.p95_ms"}[i%3],
			Value:  base + float64(i),
			At:     t0.Add(time.Duration(i) * time.Second),
		}
	}
	return out
}

// stripAttempts returns batches with Attempts zeroed, for comparisons.
func stripAttempts(bs []Batch) []Batch {
	out := make([]Batch, len(bs))
	for i, b := range bs {
		b.Attempts = 0
		out[i] = b
	}
	return out
}

func seqs(bs []Batch) string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprint(b.Sequence))
	}
	return strings.Join(out, ",")
}

func pending(t *testing.T, s *Spool, after uint64, limit int) []Batch {
	t.Helper()
	bs, err := s.Pending(after, limit)
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

func TestAddPendingAckRestart(t *testing.T) {
	s, path := newSpool(t, Options{})
	in := recs(1234, 0)
	// Values and times that exercise every encoding path.
	in[0].Value = 0.1
	in[1].Value = math.Copysign(0, -1)
	in[2].Value = -42
	in[3].Value = 1 << 53
	in[4].Value = 1<<53 + 2 // integral but beyond 2^53: stored as bits
	in[5].Value = math.MaxFloat64
	in[6].Value = -math.SmallestNonzeroFloat64
	in[7].At = time.Date(1999, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	in[8].At = time.Now() // has a monotonic reading
	in[9].Tenant = "globex"
	got, err := s.AddUsage(in)
	if err != nil {
		t.Fatal(err)
	}
	if seqs(got) != "1,2,3" || len(got[0].Records) != 500 || len(got[1].Records) != 500 || len(got[2].Records) != 234 {
		t.Fatalf("AddUsage returned batches %s of %d, %d, %d records", seqs(got), len(got[0].Records), len(got[1].Records), len(got[2].Records))
	}
	var flat []Record
	for _, b := range got {
		if b.Attempts != 0 || b.CreatedAt.IsZero() || b.CreatedAt.Location() != time.UTC {
			t.Fatalf("batch %d: Attempts %d, CreatedAt %v", b.Sequence, b.Attempts, b.CreatedAt)
		}
		flat = append(flat, b.Records...)
	}
	for i := range in {
		a, b := in[i], flat[i]
		if a.Tenant != b.Tenant || a.Meter != b.Meter || math.Float64bits(a.Value) != math.Float64bits(b.Value) || !a.At.Equal(b.At) || b.At.Location() != time.UTC {
			t.Fatalf("record %d stored as %+v, was %+v", i, b, a)
		}
	}
	if st := s.Stats(); st.UsageBatches != 3 || st.UsageRecords != 1234 || st.LastSequence != 3 || !st.OldestUsage.Equal(got[0].CreatedAt) || st.Full {
		t.Fatalf("Stats = %+v", st)
	}
	// What AddUsage returned is exactly what Pending returns.
	if p := pending(t, s, 0, 0); !reflect.DeepEqual(stripAttempts(p), got) {
		t.Fatal("Pending differs from what AddUsage returned")
	}

	// Restart: the same batches, the same accounting.
	before := s.Stats()
	s.Close()
	s = open(t, path, Options{})
	if st := s.Stats(); st != before {
		t.Fatalf("Stats after reopen %+v, before %+v", st, before)
	}
	if p := pending(t, s, 0, 0); !reflect.DeepEqual(stripAttempts(p), got) {
		t.Fatal("Pending after reopen differs from what AddUsage returned")
	}

	// Ack deletes only that batch; it is idempotent.
	for _, seq := range []uint64{2, 2, 99} {
		if err := s.Ack(seq); err != nil {
			t.Fatalf("Ack(%d) = %v", seq, err)
		}
	}
	p := pending(t, s, 0, 0)
	if seqs(p) != "1,3" || !reflect.DeepEqual(stripAttempts(p), []Batch{got[0], got[2]}) {
		t.Fatalf("after Ack(2): pending %s", seqs(p))
	}
	if st := s.Stats(); st.UsageBatches != 2 || st.UsageRecords != 734 || st.LastSequence != 3 {
		t.Fatalf("Stats after Ack(2) = %+v", st)
	}
	for _, tc := range []struct {
		after uint64
		limit int
		want  string
	}{{0, 1, "1"}, {1, 0, "3"}, {2, 5, "3"}, {3, 0, ""}, {math.MaxUint64, 0, ""}} {
		if got := seqs(pending(t, s, tc.after, tc.limit)); got != tc.want {
			t.Errorf("Pending(%d, %d) = %q, want %q", tc.after, tc.limit, got, tc.want)
		}
	}

	// Acking the oldest moves OldestUsage; acking everything keeps the
	// high-water mark, across a restart too.
	if err := s.Ack(1); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); !st.OldestUsage.Equal(got[2].CreatedAt) {
		t.Fatalf("OldestUsage %v, want %v", st.OldestUsage, got[2].CreatedAt)
	}
	if err := s.Ack(3); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.UsageBatches != 0 || st.UsageRecords != 0 || st.Bytes != 0 || !st.OldestUsage.IsZero() || st.LastSequence != 3 {
		t.Fatalf("Stats when all acked = %+v", st)
	}
	s.Close()
	s = open(t, path, Options{})
	if st := s.Stats(); st.LastSequence != 3 || st.Bytes != 0 {
		t.Fatalf("Stats after reopen of an empty spool = %+v", st)
	}
	next, err := s.AddUsage(recs(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if seqs(next) != "4" {
		t.Fatalf("first batch after all were acked and a restart has sequence %s, want 4", seqs(next))
	}
	if b, err := s.AddUsage(nil); b != nil || err != nil {
		t.Fatalf("AddUsage(nil) = %v, %v", b, err)
	}
	if st := s.Stats(); st.LastSequence != 4 {
		t.Fatalf("AddUsage(nil) consumed a sequence: %+v", st)
	}
}

func TestAttemptsKeepContent(t *testing.T) {
	s, path := newSpool(t, Options{MaxBatchRecords: 10})
	added, err := s.AddUsage(recs(25, 7))
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		p := pending(t, s, 0, 0)
		for _, b := range p {
			if b.Attempts != round {
				t.Fatalf("round %d: batch %d Attempts %d", round, b.Sequence, b.Attempts)
			}
		}
		if !reflect.DeepEqual(stripAttempts(p), added) {
			t.Fatalf("round %d: content changed", round)
		}
	}
	// Only the batches handed out count an attempt.
	if p := pending(t, s, 2, 0); seqs(p) != "3" || p[0].Attempts != 4 {
		t.Fatalf("Pending(2) = %s attempts %d", seqs(p), p[0].Attempts)
	}
	bytes := s.Stats().Bytes
	s.Close()
	s = open(t, path, Options{})
	p := pending(t, s, 0, 0)
	if p[0].Attempts != 4 || p[2].Attempts != 5 {
		t.Fatalf("attempts after reopen: %d, %d; want 4, 5", p[0].Attempts, p[2].Attempts)
	}
	if st := s.Stats(); st.Bytes != bytes {
		t.Fatalf("counting attempts changed Bytes: %d, was %d", st.Bytes, bytes)
	}
}

func TestValidation(t *testing.T) {
	valid := Record{Tenant: "acme", Meter: "requests", Value: 1, At: t0}
	for _, tc := range []struct {
		name  string
		edit  func(*Record)
		field string
	}{
		{"empty tenant", func(r *Record) { r.Tenant = "" }, "tenant"},
		{"uppercase tenant", func(r *Record) { r.Tenant = "Acme" }, "tenant"},
		{"tenant with leading dash", func(r *Record) { r.Tenant = "-acme" }, "tenant"},
		{"tenant too long", func(r *Record) { r.Tenant = strings.Repeat("a", 64) }, "tenant"},
		{"empty meter", func(r *Record) { r.Meter = "" }, "meter"},
		{"meter starting with a digit", func(r *Record) { r.Meter = "1req" }, "meter"},
		{"meter with uppercase", func(r *Record) { r.Meter = "Requests" }, "meter"},
		{"meter with a dash", func(r *Record) { r.Meter = "req-count" }, "meter"},
		{"meter too long", func(r *Record) { r.Meter = "m" + strings.Repeat("x", 100) }, "meter"},
		{"NaN", func(r *Record) { r.Value = math.NaN() }, "value"},
		{"+Inf", func(r *Record) { r.Value = math.Inf(1) }, "value"},
		{"-Inf", func(r *Record) { r.Value = math.Inf(-1) }, "value"},
		{"zero time", func(r *Record) { r.At = time.Time{} }, "at"},
		{"year 2300", func(r *Record) { r.At = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }, "at"},
		{"year 1600", func(r *Record) { r.At = time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC) }, "at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newSpool(t, Options{MaxBatchRecords: 100})
			// The bad record comes after more than a batch's worth of good ones.
			in := make([]Record, 150)
			for i := range in {
				in[i] = valid
			}
			tc.edit(&in[130])
			_, err := s.AddUsage(in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("AddUsage = %v, want ErrInvalid", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "record 130") || !strings.Contains(msg, tc.field) {
				t.Fatalf("error %q does not name record 130 and field %s", msg, tc.field)
			}
			if st := s.Stats(); st != (Stats{}) {
				t.Fatalf("a refused call stored something: %+v", st)
			}
		})
	}
	// The boundaries that are valid.
	s, _ := newSpool(t, Options{})
	ok := []Record{
		{Tenant: "a", Meter: "m", Value: 0, At: time.Unix(0, 1)},
		{Tenant: strings.Repeat("a", 63), Meter: "m" + strings.Repeat("x", 99), Value: -math.MaxFloat64, At: time.Unix(0, math.MaxInt64)},
		{Tenant: "a-1", Meter: "z.9_", Value: math.SmallestNonzeroFloat64, At: time.Unix(0, math.MinInt64)},
	}
	if _, err := s.AddUsage(ok); err != nil {
		t.Fatalf("valid boundary records refused: %v", err)
	}
}

func TestValidMeterMatchesPattern(t *testing.T) {
	re := regexp.MustCompile(`^[a-z][a-z0-9_.]{0,99}$`)
	cases := []string{"", "a", "A", "0", "_", ".", "a0_.", "a-b", "a b", "é", "aé", "req.total", "a\n",
		strings.Repeat("a", 100), strings.Repeat("a", 101), "z" + strings.Repeat("9", 99), "{", "`", "a/", "a:", "a\x00"}
	for c := range 256 {
		cases = append(cases, "a"+string(rune(c)), string([]byte{byte(c)}))
	}
	for _, m := range cases {
		if got, want := ValidMeter(m), re.MatchString(m); got != want {
			t.Errorf("ValidMeter(%q) = %v, pattern says %v", m, got, want)
		}
	}
}

func health(i int) Health {
	return Health{
		At: t0.Add(time.Duration(i) * time.Minute),
		Components: []Component{
			{Name: "provider/local", Status: "healthy", Drift: true, DriftDetail: fmt.Sprintf("replicas: plan 3, live %d", i)},
			{Name: "app", Status: "degraded", Message: fmt.Sprintf("snapshot %d: p95 high — ünïcode", i), Tenant: "acme"},
		},
	}
}

// TestHealthFormat: snapshots stored before the drift fields existed still
// decode (without drift), and a component without drift is stored as
// before, so an older agent reads it too.
func TestHealthFormat(t *testing.T) {
	old := `{"at":"2025-03-04T05:06:07Z","c":[{"n":"provider/local","s":"healthy"},{"n":"app","s":"degraded","m":"slow","t":"acme"}]}`
	got, err := decodeHealth([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	want := Health{At: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), Components: []Component{
		{Name: "provider/local", Status: "healthy"}, {Name: "app", Status: "degraded", Message: "slow", Tenant: "acme"},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	b, err := encodeHealth(want)
	if err != nil || string(b) != old {
		t.Fatalf("encoded %s (%v), want %s", b, err, old)
	}

	want.Components[0].Drift, want.Components[0].DriftDetail = true, "image: plan v1, live v2"
	b, err = encodeHealth(want)
	if err != nil || !strings.Contains(string(b), `"d":true,"dd":"image: plan v1, live v2"`) {
		t.Fatalf("encoded %s (%v)", b, err)
	}
	if got, err := decodeHealth(b); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip: %+v (%v), want %+v", got, err, want)
	}
}

func TestHealth(t *testing.T) {
	s, path := newSpool(t, Options{})
	for i := range 4 {
		if err := s.AddHealth(health(i)); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.HealthSnapshots != 4 || st.Bytes == 0 {
		t.Fatalf("Stats = %+v", st)
	}
	s.Close()
	s = open(t, path, Options{})
	got, err := s.TakeHealth(3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Health{health(0), health(1), health(2)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("TakeHealth(3) = %+v\nwant %+v", got, want)
	}
	if st := s.Stats(); st.HealthSnapshots != 1 {
		t.Fatalf("after TakeHealth(3): %+v", st)
	}
	if err := s.AddHealth(health(9)); err != nil {
		t.Fatal(err)
	}
	got, err = s.TakeHealth(0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Health{health(3), health(9)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("TakeHealth(0) = %+v, want snapshots 3 and 9", got)
	}
	if got, err := s.TakeHealth(0); len(got) != 0 || err != nil {
		t.Fatalf("TakeHealth of nothing = %v, %v", got, err)
	}
	if st := s.Stats(); st.HealthSnapshots != 0 || st.Bytes != 0 || st.DroppedHealth != 0 {
		t.Fatalf("Stats after taking all = %+v", st)
	}

	// The count bound drops the oldest.
	s.maxHealth = 3
	for i := range 5 {
		if err := s.AddHealth(health(i)); err != nil {
			t.Fatal(err)
		}
	}
	got, _ = s.TakeHealth(0)
	if want := []Health{health(2), health(3), health(4)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("with a bound of 3: %+v, want snapshots 2, 3, 4", got)
	}
	if st := s.Stats(); st.DroppedHealth != 2 {
		t.Fatalf("DroppedHealth = %d, want 2", st.DroppedHealth)
	}
	s.Close()
	s = open(t, path, Options{})
	if st := s.Stats(); st.DroppedHealth != 2 {
		t.Fatalf("DroppedHealth after reopen = %d, want 2", st.DroppedHealth)
	}
}

func TestHealthValidation(t *testing.T) {
	s, _ := newSpool(t, Options{})
	for _, tc := range []struct {
		name, want string
		edit       func(*Health)
	}{
		{"zero time", "at is the zero time", func(h *Health) { h.At = time.Time{} }},
		{"year 10000", "at 10000-01-01T00:00:00Z is outside the years 1 to 9999", func(h *Health) { h.At = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"no name", "component 1: invalid: name is empty", func(h *Health) { h.Components[1].Name = "" }},
		{"no status", "component 0: invalid: status is empty", func(h *Health) { h.Components[0].Status = "" }},
		{"long message", "message is 4097 bytes", func(h *Health) { h.Components[1].Message = strings.Repeat("x", 4097) }},
		{"long name", "name is 257 bytes", func(h *Health) { h.Components[1].Name = strings.Repeat("x", 257) }},
		{"bad UTF-8", "message is not valid UTF-8", func(h *Health) { h.Components[1].Message = "\xff" }},
		{"long drift detail", "drift detail is 1025 bytes", func(h *Health) { h.Components[0].DriftDetail = strings.Repeat("x", 1025) }},
		{"drift detail not UTF-8", "drift detail is not valid UTF-8", func(h *Health) { h.Components[0].DriftDetail = "\xff" }},
		{"bad tenant", "tenant", func(h *Health) { h.Components[1].Tenant = "Acme" }},
		{"too many components", "1001 components", func(h *Health) { h.Components = make([]Component, 1001) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := health(0)
			tc.edit(&h)
			err := s.AddHealth(h)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("AddHealth = %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
	if st := s.Stats(); st.HealthSnapshots != 0 {
		t.Fatalf("refused snapshots were stored: %+v", st)
	}
	h := health(0)
	h.Components = nil
	if err := s.AddHealth(h); err != nil {
		t.Fatalf("snapshot without components: %v", err)
	}
}

// sizeOf returns the Stats.Bytes that storing recs adds to an empty spool.
func sizeOf(t *testing.T, opts Options, in []Record) int64 {
	t.Helper()
	s, _ := newSpool(t, opts)
	if _, err := s.AddUsage(in); err != nil {
		t.Fatal(err)
	}
	return s.Stats().Bytes
}

func TestSizeBoundIsExact(t *testing.T) {
	in := recs(1234, 1e6)
	need := sizeOf(t, Options{MaxBatchRecords: 500}, in)
	// Exactly enough room stores it; one byte less refuses it.
	s, _ := newSpool(t, Options{MaxBatchRecords: 500, MaxBytes: need})
	if _, err := s.AddUsage(in); err != nil {
		t.Fatalf("AddUsage into exactly enough room: %v", err)
	}
	if st := s.Stats(); st.Bytes != need {
		t.Fatalf("Bytes %d, want %d", st.Bytes, need)
	}
	s, _ = newSpool(t, Options{MaxBatchRecords: 500, MaxBytes: need - 1})
	_, err := s.AddUsage(in)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("AddUsage one byte short = %v, want ErrFull", err)
	}
	if want := fmt.Sprintf("need %d bytes; 0 bytes of usage are spooled and MaxBytes is %d", need, need-1); !strings.Contains(err.Error(), want) {
		t.Fatalf("ErrFull message %q does not give the sizes (%q)", err, want)
	}
	if st := s.Stats(); !st.Full || st.Bytes != 0 || st.LastSequence != 0 {
		t.Fatalf("Stats after ErrFull = %+v", st)
	}
	// The encoding is compact: well under 16 bytes a record here.
	if per := float64(need) / float64(len(in)); per > 16 {
		t.Errorf("%.1f bytes per record spooled", per)
	} else {
		t.Logf("%d records take %d bytes (%.1f bytes per record)", len(in), need, per)
	}
}

func TestSizeBoundDropsHealthFirst(t *testing.T) {
	batch := recs(100, 0)
	usageSize := sizeOf(t, Options{}, batch)

	c := &clock{t: t0}
	probe, _ := newSpool(t, Options{Now: c.now})
	if err := probe.AddHealth(health(0)); err != nil {
		t.Fatal(err)
	}
	healthSize := probe.Stats().Bytes

	// Room for two batches and two snapshots, with a few bytes to spare.
	max := 2*usageSize + 2*healthSize + 10
	s, path := newSpool(t, Options{MaxBytes: max})
	for i := range 4 {
		if err := s.AddHealth(health(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Four snapshots fit while there is no usage.
	if st := s.Stats(); st.HealthSnapshots != 4 || st.DroppedHealth != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	mustAdd := func() {
		t.Helper()
		if _, err := s.AddUsage(batch); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Bytes > max {
			t.Fatalf("Bytes %d above MaxBytes %d", st.Bytes, max)
		}
	}
	mustAdd()
	mustAdd()
	// The two oldest snapshots made room.
	if st := s.Stats(); st.HealthSnapshots != 2 || st.DroppedHealth != 2 || st.UsageBatches != 2 || st.Full {
		t.Fatalf("after two batches: %+v", st)
	}
	// A third batch fits only if usage alone fits: it does not, so nothing
	// changes, not even the health snapshots.
	before := s.Stats()
	_, err := s.AddUsage(batch)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("third batch: %v, want ErrFull", err)
	}
	after := s.Stats()
	if !after.Full {
		t.Fatal("Stats.Full not set after ErrFull")
	}
	after.Full = false
	if after != before {
		t.Fatalf("ErrFull changed the spool: %+v, was %+v", after, before)
	}
	// A health snapshot now displaces an older one, not usage.
	if err := s.AddHealth(health(7)); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.HealthSnapshots != 2 || st.DroppedHealth != 3 || st.UsageBatches != 2 || st.Bytes > max {
		t.Fatalf("after a health snapshot under pressure: %+v", st)
	}
	// Freed by an ack, the third batch goes in; its sequence is the next
	// one (the refused call used none), and Full clears.
	if err := s.Ack(1); err != nil {
		t.Fatal(err)
	}
	b, err := s.AddUsage(batch)
	if err != nil {
		t.Fatal(err)
	}
	if b[0].Sequence != 3 {
		t.Fatalf("sequence after a refused call = %d, want 3", b[0].Sequence)
	}
	st := s.Stats()
	if st.Full || st.Bytes > max || st.HealthSnapshots != 2 {
		t.Fatalf("after the ack and the third batch: %+v", st)
	}
	got, _ := s.TakeHealth(0)
	if want := []Health{health(3), health(7)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("remaining health %+v, want the newest two (3 and 7)", got)
	}
	// The incremental accounting equals what a reopen counts.
	st = s.Stats()
	s.Close()
	s = open(t, path, Options{MaxBytes: max})
	if got := s.Stats(); got != st {
		t.Fatalf("Stats after reopen %+v, before %+v", got, st)
	}

	// A snapshot that cannot fit even alone is refused.
	tiny, _ := newSpool(t, Options{MaxBytes: healthSize - 1})
	if err := tiny.AddHealth(health(0)); !errors.Is(err, ErrFull) {
		t.Fatalf("oversized snapshot: %v, want ErrFull", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	s, _ := newSpool(t, Options{MaxBatchRecords: 7})
	const calls = 150
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	added := make(chan []Batch, calls)
	// Two producers.
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls / 2 {
				n := 1 + (c*13+g)%20
				b, err := s.AddUsage(recs(n, float64(g*1e6+c*100)))
				if err != nil {
					errs <- err
					return
				}
				added <- b
				if err := s.AddHealth(health(c)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// One sender: acks everything it sees until the producers are done and
	// nothing is pending.
	var producersDone atomic.Bool
	go func() { wg.Wait(); producersDone.Store(true) }()
	done := make(chan struct{})
	acked := map[uint64]int{}
	var ackedRecords int
	go func() {
		defer close(done)
		for {
			producing := !producersDone.Load()
			p, err := s.Pending(0, 10)
			if err != nil {
				errs <- err
				return
			}
			for _, b := range p {
				if err := s.Ack(b.Sequence); err != nil {
					errs <- err
					return
				}
				acked[b.Sequence]++
				ackedRecords += len(b.Records)
			}
			if _, err := s.TakeHealth(5); err != nil {
				errs <- err
				return
			}
			_ = s.Stats()
			if !producing && len(p) == 0 {
				return
			}
		}
	}()
	<-done
	close(added)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var seen []uint64
	var addedRecords int
	for bs := range added {
		for _, b := range bs {
			seen = append(seen, b.Sequence)
			addedRecords += len(b.Records)
		}
	}
	st := s.Stats()
	if uint64(len(seen)) != st.LastSequence || len(acked) != len(seen) {
		t.Fatalf("%d batches added, %d acked, LastSequence %d", len(seen), len(acked), st.LastSequence)
	}
	for seq := uint64(1); seq <= st.LastSequence; seq++ {
		if acked[seq] != 1 {
			t.Fatalf("batch %d acked %d times (want exactly once)", seq, acked[seq])
		}
	}
	if addedRecords != ackedRecords || st.UsageBatches != 0 || st.UsageRecords != 0 {
		t.Fatalf("added %d records, acked %d; Stats %+v", addedRecords, ackedRecords, st)
	}
}

func TestSecondOpenLocked(t *testing.T) {
	_, path := newSpool(t, Options{})
	_, err := Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another attache-agent seems to use this state directory") {
		t.Fatalf("second Open = %v, want ErrLocked naming another attache-agent", err)
	}
}

func TestFileMode(t *testing.T) {
	s, path := newSpool(t, Options{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("spool mode %04o, want 0600", perm)
	}
	s.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, securefile.ErrTooOpen) {
		t.Fatalf("Open of a 0644 spool = %v, want ErrTooOpen", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	for _, tc := range []struct {
		opts  Options
		field string
	}{
		{Options{MaxBytes: -1}, "MaxBytes"},
		{Options{MaxBatchRecords: -1}, "MaxBatchRecords"},
		{Options{MaxBatchRecords: MaxBatchRecordsLimit + 1}, "MaxBatchRecords"},
		{Options{Timeout: -time.Second}, "Timeout"},
	} {
		if _, err := Open(path, tc.opts); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Open(%+v) = %v, want an error naming %s", tc.opts, err, tc.field)
		}
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("refused options created the file")
	}
}

func TestCorruptBatchDetected(t *testing.T) {
	in := recs(40, 0.5)
	val := encodeBatch(t0.UnixNano(), in)
	b, err := decodeBatch(1, val)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if b.Records[i] != in[i] {
			t.Fatalf("record %d decoded as %+v, was %+v", i, b.Records[i], in[i])
		}
	}
	for i := range val {
		bad := append([]byte(nil), val...)
		bad[i] ^= 0x10
		if _, err := decodeBatch(1, bad); err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
	}
	if _, err := decodeBatch(1, val[:len(val)-1]); err == nil {
		t.Fatal("a truncated batch decoded")
	}
}

// FuzzDecodeBatch: decoding arbitrary bytes (checksum fixed up, so the
// parser itself is exercised) never panics, and whatever decodes encodes to
// a batch that decodes to the same records.
func FuzzDecodeBatch(f *testing.F) {
	seed := func(v []byte) []byte { return v[:len(v)-4] } // without the checksum
	f.Add(seed(encodeBatch(t0.UnixNano(), recs(5, 0.25))))
	f.Add(seed(encodeBatch(0, recs(1, 3))))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		data := binary.BigEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, castagnoli))
		b, err := decodeBatch(1, data)
		if err != nil {
			return
		}
		again, err := decodeBatch(1, encodeBatch(b.CreatedAt.UnixNano(), b.Records))
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if !again.CreatedAt.Equal(b.CreatedAt) || len(again.Records) != len(b.Records) {
			t.Fatalf("re-encoded batch differs: %+v, was %+v", again, b)
		}
		for i, r := range b.Records {
			g := again.Records[i]
			if g.Tenant != r.Tenant || g.Meter != r.Meter || math.Float64bits(g.Value) != math.Float64bits(r.Value) || !g.At.Equal(r.At) {
				t.Fatalf("record %d re-encoded as %+v, was %+v", i, g, r)
			}
		}
	})
}

// TestStartAfterAndTotals: a new spool starts after StartAfter (an existing
// one keeps its sequence), and Totals sums every value ever spooled per
// tenant and meter, acknowledged or not, across a restart.
func TestStartAfterAndTotals(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s := open(t, path, Options{StartAfter: 1_000_000})
	bs, err := s.AddUsage(recs(6, 1)) // values 1..6, meters cycling
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].Sequence != 1_000_001 {
		t.Fatalf("first batch of a new spool: %s, want 1000001", seqs(bs))
	}
	if err := s.Ack(bs[0].Sequence); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddUsage([]Record{{Tenant: "acme", Meter: "requests", Value: 0.5, At: t0}, {Tenant: "beta", Meter: "requests", Value: 2, At: t0}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path, Options{StartAfter: 5})
	if got := s.Stats().LastSequence; got != 1_000_002 {
		t.Fatalf("reopened spool's last sequence %d, want 1000002 (StartAfter applies to new files only)", got)
	}
	got, err := s.Totals()
	if err != nil {
		t.Fatal(err)
	}
	want := []Total{
		{Tenant: "acme", Meter: "errors", Sum: 2 + 5, Records: 2},
		{Tenant: "acme", Meter: "latency.p95_ms", Sum: 3 + 6, Records: 2},
		{Tenant: "acme", Meter: "requests", Sum: 1 + 4 + 0.5, Records: 3},
		{Tenant: "beta", Meter: "requests", Sum: 2, Records: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Totals = %+v\nwant %+v", got, want)
	}
	// A refused call adds nothing to the totals.
	if _, err := s.AddUsage([]Record{{Tenant: "acme", Meter: "requests", Value: 1, At: t0}, {Tenant: "Bad!", Meter: "requests", Value: 1, At: t0}}); err == nil {
		t.Fatal("invalid record accepted")
	}
	if again, _ := s.Totals(); !reflect.DeepEqual(again, want) {
		t.Fatalf("a refused AddUsage changed the totals: %+v", again)
	}
}
