package storetest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
)

// h0 is the UTC hour t0 falls in.
var h0 = t0.Truncate(time.Hour)

func hour(n int) time.Time { return h0.Add(time.Duration(n) * time.Hour) }

func mustIngest(t *testing.T, s store.Store, k store.AgentKey, seq uint64, recs []store.UsageRecord, wantDup bool) {
	t.Helper()
	dup, err := s.IngestUsage(ctx(t), k, seq, recs)
	if err != nil {
		t.Fatalf("IngestUsage(%v, %d): %v", k, seq, err)
	}
	if dup != wantDup {
		t.Fatalf("IngestUsage(%v, %d) duplicate = %v, want %v", k, seq, dup, wantDup)
	}
}

func mustQuery(t *testing.T, s store.Store, f store.UsageFilter) []store.UsageHour {
	t.Helper()
	hs, err := s.QueryUsage(ctx(t), f)
	if err != nil {
		t.Fatalf("QueryUsage(%+v): %v", f, err)
	}
	return hs
}

func mustTotals(t *testing.T, s store.Store, tenant string) []store.UsageHour {
	t.Helper()
	hs, err := s.UsageTotals(ctx(t), tenant)
	if err != nil {
		t.Fatalf("UsageTotals(%q): %v", tenant, err)
	}
	return hs
}

func wantHours(t *testing.T, what string, got, want []store.UsageHour) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

// testUsage: records fold per tenant, meter and hour; a batch counts once;
// queries filter and order.
func testUsage(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "a2")
	mustAgent(t, s, "beta", "b1")
	a1, a2, b1 := store.AgentKey{Tenant: "acme", ID: "a1"}, store.AgentKey{Tenant: "acme", ID: "a2"}, store.AgentKey{Tenant: "beta", ID: "b1"}

	batch1 := []store.UsageRecord{
		{Meter: "requests", Value: 3, At: t0},
		{Meter: "requests", Value: 4, At: t0.Add(10 * time.Minute)}, // the latest in hour 0
		{Meter: "requests", Value: 5, At: hour(1)},                  // on the boundary: hour 1
		{Meter: "cpu.seconds", Value: 2.5, At: t0},
		{Meter: "requests", Value: 1, At: t0.Add(-time.Minute)},
	}
	mustIngest(t, s, a1, 1, batch1, false)
	mustIngest(t, s, a1, 1, batch1, true)
	// A re-sent batch changes nothing even if its content differs.
	mustIngest(t, s, a1, 1, []store.UsageRecord{{Meter: "requests", Value: 1000, At: t0}}, true)
	// The same sequence number from another agent is another batch.
	mustIngest(t, s, a2, 1, []store.UsageRecord{
		{Meter: "requests", Value: 10, At: t0.Add(5 * time.Minute)},
		{Meter: "requests", Value: 2, At: t0.Add(10 * time.Minute)}, // same time as a1's latest
	}, false)
	mustIngest(t, s, b1, 1, []store.UsageRecord{{Meter: "requests", Value: 100, At: t0}}, false)
	// An empty batch is recorded too.
	mustIngest(t, s, a1, 2, nil, false)
	mustIngest(t, s, a1, 2, nil, true)

	cpu0 := store.UsageHour{Tenant: "acme", Meter: "cpu.seconds", Hour: h0, Sum: 2.5, Count: 1, Max: 2.5, Last: 2.5, LastAt: micro(t0)}
	// Of records with the same time, the one stored later is the last.
	req0 := store.UsageHour{Tenant: "acme", Meter: "requests", Hour: h0, Sum: 3 + 4 + 1 + 10 + 2, Count: 5, Max: 10, Last: 2, LastAt: micro(t0.Add(10 * time.Minute))}
	req1 := store.UsageHour{Tenant: "acme", Meter: "requests", Hour: hour(1), Sum: 5, Count: 1, Max: 5, Last: 5, LastAt: hour(1)}
	beta0 := store.UsageHour{Tenant: "beta", Meter: "requests", Hour: h0, Sum: 100, Count: 1, Max: 100, Last: 100, LastAt: micro(t0)}

	wantHours(t, "QueryUsage(all)", mustQuery(t, s, store.UsageFilter{}), []store.UsageHour{cpu0, req0, req1, beta0})
	wantHours(t, "QueryUsage(acme)", mustQuery(t, s, store.UsageFilter{Tenant: "acme"}), []store.UsageHour{cpu0, req0, req1})
	wantHours(t, "QueryUsage(meter)", mustQuery(t, s, store.UsageFilter{Meter: "requests"}), []store.UsageHour{req0, req1, beta0})
	wantHours(t, "QueryUsage(from hour 1)", mustQuery(t, s, store.UsageFilter{From: hour(1)}), []store.UsageHour{req1})
	wantHours(t, "QueryUsage(to hour 1)", mustQuery(t, s, store.UsageFilter{Tenant: "acme", To: hour(1)}), []store.UsageHour{cpu0, req0})
	wantHours(t, "QueryUsage(hour 0 only)", mustQuery(t, s, store.UsageFilter{Tenant: "acme", Meter: "requests", From: h0, To: hour(1)}), []store.UsageHour{req0})
	wantHours(t, "QueryUsage(unknown tenant)", mustQuery(t, s, store.UsageFilter{Tenant: "nope"}), nil)
	_, err := s.QueryUsage(ctx(t), store.UsageFilter{From: hour(1), To: hour(1)})
	wantErr(t, "QueryUsage(to == from)", err, store.ErrInvalid)

	wantHours(t, "UsageTotals(acme)", mustTotals(t, s, "acme"), []store.UsageHour{
		{Tenant: "acme", Meter: "cpu.seconds", Sum: 2.5, Count: 1, Max: 2.5, Last: 2.5, LastAt: micro(t0)},
		{Tenant: "acme", Meter: "requests", Sum: 25, Count: 6, Max: 10, Last: 5, LastAt: hour(1)},
	})
	if got := mustTotals(t, s, ""); len(got) != 3 || got[2].Tenant != "beta" || got[2].Sum != 100 {
		t.Errorf("UsageTotals(all) = %+v", got)
	}

	// The tenant comes from the key: an agent of acme named under beta
	// does not exist.
	_, err = s.IngestUsage(ctx(t), store.AgentKey{Tenant: "beta", ID: "a1"}, 9, batch1)
	wantErr(t, "IngestUsage(agent under another tenant)", err, store.ErrNotFound)
	_, err = s.IngestUsage(ctx(t), store.AgentKey{Tenant: "acme", ID: "nope"}, 1, batch1)
	wantErr(t, "IngestUsage(unknown agent)", err, store.ErrNotFound)
	wantHours(t, "after refused batches", mustQuery(t, s, store.UsageFilter{}), []store.UsageHour{cpu0, req0, req1, beta0})
}

// testUsageExact: sums of integral values are exact, within a batch and
// across batches, up to 2^53.
func testUsageExact(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	const base = 1 << 36
	var want int64
	for seq := uint64(1); seq <= 10; seq++ {
		recs := make([]store.UsageRecord, 1000)
		for i := range recs {
			v := int64(base + int(seq)*1000 + i)
			want += v
			recs[i] = store.UsageRecord{Meter: "bytes", Value: float64(v), At: t0.Add(time.Duration(i) * time.Millisecond)}
		}
		mustIngest(t, s, k, seq, recs, false)
	}
	if want >= 1<<53 {
		t.Fatalf("test sum %d is beyond 2^53", want)
	}
	mustIngest(t, s, k, 11, []store.UsageRecord{{Meter: "bytes", Value: 7, At: hour(1)}}, false)
	want += 7
	tot := mustTotals(t, s, "acme")
	if len(tot) != 1 || tot[0].Sum != float64(want) || tot[0].Count != 10001 || tot[0].Last != 7 {
		t.Fatalf("UsageTotals = %+v, want sum %d, count 10001, last 7", tot, want)
	}
	if int64(tot[0].Sum) != want {
		t.Fatalf("sum %v is not %d", tot[0].Sum, want)
	}
}

// testUsageValidation: a bad record refuses the whole batch, naming the
// record's index and field, and stores nothing.
func testUsageValidation(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	good := store.UsageRecord{Meter: "requests", Value: 1, At: t0}
	with := func(r store.UsageRecord) []store.UsageRecord { return []store.UsageRecord{good, good, r, good} }
	tests := []struct {
		name string
		key  store.AgentKey
		seq  uint64
		recs []store.UsageRecord
		want []string // substrings of the error
	}{
		{"empty meter", k, 1, with(store.UsageRecord{Meter: "", Value: 1, At: t0}), []string{"record 2", "meter"}},
		{"upper-case meter", k, 1, with(store.UsageRecord{Meter: "Requests", Value: 1, At: t0}), []string{"record 2", `meter "Requests"`}},
		{"meter starting with a digit", k, 1, with(store.UsageRecord{Meter: "1xx", Value: 1, At: t0}), []string{"record 2", "meter"}},
		{"meter with a dash", k, 1, with(store.UsageRecord{Meter: "http-requests", Value: 1, At: t0}), []string{"record 2", "meter"}},
		{"meter of 101 bytes", k, 1, with(store.UsageRecord{Meter: "m" + strings.Repeat("x", 100), Value: 1, At: t0}), []string{"record 2", "meter"}},
		{"NaN", k, 1, with(store.UsageRecord{Meter: "requests", Value: math.NaN(), At: t0}), []string{"record 2", "value"}},
		{"+Inf", k, 1, with(store.UsageRecord{Meter: "requests", Value: math.Inf(1), At: t0}), []string{"record 2", "value"}},
		{"-Inf", k, 1, with(store.UsageRecord{Meter: "requests", Value: math.Inf(-1), At: t0}), []string{"record 2", "value"}},
		{"negative", k, 1, with(store.UsageRecord{Meter: "requests", Value: -1, At: t0}), []string{"record 2", "non-negative"}},
		{"zero time", k, 1, with(store.UsageRecord{Meter: "requests", Value: 1}), []string{"record 2", "at"}},
		{"year 10000", k, 1, with(store.UsageRecord{Meter: "requests", Value: 1, At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}), []string{"record 2", "at"}},
		{"sequence 0", k, 0, []store.UsageRecord{good}, []string{"sequence 0"}},
		{"sequence beyond int64", k, 1 << 63, []store.UsageRecord{good}, []string{"sequence"}},
		{"too many records", k, 1, make([]store.UsageRecord, store.MaxUsageBatch+1), []string{"10001 records"}},
		{"no tenant", store.AgentKey{ID: "a1"}, 1, []store.UsageRecord{good}, []string{"tenant"}},
	}
	for _, tt := range tests {
		_, err := s.IngestUsage(ctx(t), tt.key, tt.seq, tt.recs)
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", tt.name, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tt.name, err, w)
			}
		}
	}
	wantHours(t, "after refused batches", mustQuery(t, s, store.UsageFilter{}), nil)

	// Nothing went into the ledger either: seq 1 is still new. The limits
	// themselves are accepted.
	full := make([]store.UsageRecord, store.MaxUsageBatch)
	for i := range full {
		full[i] = store.UsageRecord{Meter: "m" + strings.Repeat("x", 99), Value: 1.5, At: t0}
	}
	mustIngest(t, s, k, 1, full, false)
	mustIngest(t, s, k, math.MaxInt64, []store.UsageRecord{{Meter: "a", Value: 0, At: t0}}, false)
	tot := mustTotals(t, s, "acme")
	if len(tot) != 2 || tot[0].Meter != "a" || tot[1].Count != store.MaxUsageBatch || tot[1].Sum != 1.5*store.MaxUsageBatch {
		t.Errorf("UsageTotals = %+v", tot)
	}
}

// testUsageRace: replicas ingesting the same batch at once count it once,
// and concurrent batches touching the same hourly rows all count.
func testUsageRace(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	const agents, batches, perBatch = 4, 8, 50
	for i := range agents {
		mustAgent(t, s, "acme", fmt.Sprintf("a%d", i))
	}
	IngestSameBatch(t, []store.Store{s}, store.AgentKey{Tenant: "acme", ID: "a0"})

	// Every batch touches the same meters and hours, in a different order.
	meters := []string{"m0", "m1", "m2", "m3", "m4"}
	var (
		wg   sync.WaitGroup
		want atomic.Int64
	)
	for a := range agents {
		for b := range batches {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(a), uint64(b)))
				recs := make([]store.UsageRecord, perBatch)
				var sum int64
				for i := range recs {
					v := r.Int64N(1000)
					sum += v
					recs[i] = store.UsageRecord{Meter: meters[r.IntN(len(meters))], Value: float64(v), At: hour(r.IntN(3))}
				}
				k := store.AgentKey{Tenant: "acme", ID: fmt.Sprintf("a%d", a)}
				dup, err := s.IngestUsage(ctx(t), k, uint64(1000+b), recs)
				if err != nil || dup {
					t.Errorf("IngestUsage(%v, %d) = %v, %v", k, 1000+b, dup, err)
					return
				}
				want.Add(sum)
			})
		}
	}
	wg.Wait()
	var (
		sum   float64
		count int64
	)
	for _, h := range mustTotals(t, s, "acme") {
		if h.Meter == "same" {
			continue
		}
		sum += h.Sum
		count += h.Count
	}
	if count != agents*batches*perBatch || sum != float64(want.Load()) {
		t.Errorf("after concurrent batches: count %d sum %v, want %d and %d", count, sum, agents*batches*perBatch, want.Load())
	}
}

// IngestSameBatch sends one batch of agent k from several goroutines spread
// over the stores (replicas of one database) at once, and checks that
// exactly one stored it and that it counted once. The store's tests call it
// with two stores on one database.
func IngestSameBatch(t *testing.T, replicas []store.Store, k store.AgentKey) {
	t.Helper()
	const n = 16
	recs := make([]store.UsageRecord, 200)
	for i := range recs {
		recs[i] = store.UsageRecord{Meter: "same", Value: float64(i), At: t0.Add(time.Duration(i) * time.Second)}
	}
	var (
		wg     sync.WaitGroup
		stored atomic.Int32
		start  = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			<-start
			dup, err := replicas[i%len(replicas)].IngestUsage(ctx(t), k, 77, recs)
			if err != nil {
				t.Errorf("IngestUsage from goroutine %d: %v", i, err)
				return
			}
			if !dup {
				stored.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if got := stored.Load(); got != 1 {
		t.Errorf("%d of %d concurrent ingestions of one batch stored it, want exactly 1", got, n)
	}
	hs, err := replicas[0].QueryUsage(ctx(t), store.UsageFilter{Tenant: k.Tenant, Meter: "same"})
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0].Count != int64(len(recs)) || hs[0].Sum != 199*200/2 || hs[0].Last != 199 {
		t.Errorf("after concurrent ingestion of one batch: %+v, want one hour with count %d, sum %d", hs, len(recs), 199*200/2)
	}
}
