package storetest

import (
	"math"
	"reflect"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
)

type hourKey struct {
	tenant, meter string
	hour          time.Time
}

func keysOf(hs []store.UsageHour) []hourKey {
	var ks []hourKey
	for _, h := range hs {
		ks = append(ks, hourKey{h.Tenant, h.Meter, h.Hour})
	}
	return ks
}

func mustCandidates(t *testing.T, s store.Store, before time.Time, limit int) []hourKey {
	t.Helper()
	hs, err := s.ExportCandidates(ctx(t), before, limit)
	if err != nil {
		t.Fatalf("ExportCandidates(%v, %d): %v", before, limit, err)
	}
	return keysOf(hs)
}

func wantKeys(t *testing.T, what string, got []hourKey, want ...hourKey) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func mustRecordExport(t *testing.T, s store.Store, e store.BillingExport) {
	t.Helper()
	if err := s.RecordExport(ctx(t), e); err != nil {
		t.Fatalf("RecordExport(%+v): %v", e, err)
	}
}

// testExports: the export ledger decides which hours are still to export.
func testExports(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "beta", "b1")
	a1, b1 := store.AgentKey{Tenant: "acme", ID: "a1"}, store.AgentKey{Tenant: "beta", ID: "b1"}
	mustIngest(t, s, a1, 1, []store.UsageRecord{
		{Meter: "requests", Value: 2, At: t0},
		{Meter: "requests", Value: 3, At: t0.Add(time.Minute)},
		{Meter: "requests", Value: 4, At: hour(1)},
		{Meter: "cpu", Value: 1.5, At: t0},
	}, false)
	mustIngest(t, s, b1, 1, []store.UsageRecord{{Meter: "requests", Value: 9, At: t0}}, false)
	acmeCPU0, acmeReq0, acmeReq1 := hourKey{"acme", "cpu", h0}, hourKey{"acme", "requests", h0}, hourKey{"acme", "requests", hour(1)}
	betaReq0 := hourKey{"beta", "requests", h0}

	wantKeys(t, "candidates before hour 0", mustCandidates(t, s, h0, 0))
	wantKeys(t, "candidates before hour 1", mustCandidates(t, s, hour(1), 0), acmeCPU0, acmeReq0, betaReq0)
	wantKeys(t, "candidates before hour 2", mustCandidates(t, s, hour(2), 0), acmeCPU0, acmeReq0, betaReq0, acmeReq1)
	wantKeys(t, "candidates, limit 2", mustCandidates(t, s, hour(2), 2), acmeCPU0, acmeReq0)
	hs, err := s.ExportCandidates(ctx(t), hour(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.UsageHour{Tenant: "acme", Meter: "cpu", Hour: h0, Sum: 1.5, Count: 1, Max: 1.5, Last: 1.5, LastAt: micro(t0)}); len(hs) != 1 || hs[0] != want {
		t.Errorf("candidate = %+v, want %+v", hs, want)
	}

	exp := func(k hourKey, status string, attempts int, at time.Time, lastErr string) store.BillingExport {
		return store.BillingExport{Tenant: k.tenant, Meter: k.meter, Hour: k.hour, Identifier: "id-" + k.tenant + "-" + k.meter,
			Value: 5, Status: status, Attempts: attempts, LastError: lastErr, ExportedAt: at}
	}
	// Sent: no longer a candidate.
	mustRecordExport(t, s, exp(acmeReq0, store.ExportSent, 1, hour(2), ""))
	wantKeys(t, "after sent", mustCandidates(t, s, hour(2), 0), acmeCPU0, betaReq0, acmeReq1)

	// Failed: still a candidate, after the hours never tried.
	mustRecordExport(t, s, exp(acmeCPU0, store.ExportFailed, 3, hour(2), "boom"))
	wantKeys(t, "after failed", mustCandidates(t, s, hour(2), 0), betaReq0, acmeReq1, acmeCPU0)
	// Failed ones take turns: the least recently tried first.
	mustRecordExport(t, s, exp(betaReq0, store.ExportFailed, 1, hour(2).Add(-time.Minute), "503"))
	wantKeys(t, "two failed", mustCandidates(t, s, hour(2), 0), acmeReq1, betaReq0, acmeCPU0)
	mustRecordExport(t, s, exp(betaReq0, store.ExportFailed, 2, hour(2).Add(time.Minute), "503 again"))
	wantKeys(t, "two failed, retried", mustCandidates(t, s, hour(2), 0), acmeReq1, acmeCPU0, betaReq0)

	// A failed row becomes sent; its attempts add up.
	mustRecordExport(t, s, exp(acmeCPU0, store.ExportSent, 1, hour(3), ""))
	// Sent and skipped rows are final.
	mustRecordExport(t, s, exp(acmeCPU0, store.ExportFailed, 4, hour(4), "late failure from another exporter"))
	mustRecordExport(t, s, exp(betaReq0, store.ExportSkipped, 0, hour(3), "tenant has no billing customer"))
	mustRecordExport(t, s, exp(betaReq0, store.ExportFailed, 1, hour(4), "ignored"))
	wantKeys(t, "after final rows", mustCandidates(t, s, hour(2), 0), acmeReq1)

	// A batch arriving late for an exported hour does not make it a
	// candidate again (the exporter's Delay is there for late batches).
	mustIngest(t, s, a1, 2, []store.UsageRecord{{Meter: "requests", Value: 1, At: t0}}, false)
	wantKeys(t, "after a late batch", mustCandidates(t, s, hour(2), 0), acmeReq1)

	list, err := s.ListExports(ctx(t), "", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := []store.BillingExport{
		exp(acmeCPU0, store.ExportSent, 4, micro(hour(3)), ""),
		exp(acmeReq0, store.ExportSent, 1, micro(hour(2)), ""),
		exp(betaReq0, store.ExportSkipped, 3, micro(hour(3)), "tenant has no billing customer"),
	}
	if !reflect.DeepEqual(list, want) {
		t.Errorf("ListExports =\n %+v\nwant\n %+v", list, want)
	}
	if l, _ := s.ListExports(ctx(t), "acme", time.Time{}, time.Time{}); len(l) != 2 || l[0].Meter != "cpu" {
		t.Errorf("ListExports(acme) = %+v", l)
	}
	if l, _ := s.ListExports(ctx(t), "", h0, hour(1)); len(l) != 3 {
		t.Errorf("ListExports(hour 0) = %+v", l)
	}
	if l, _ := s.ListExports(ctx(t), "", hour(1), time.Time{}); len(l) != 0 {
		t.Errorf("ListExports(from hour 1) = %+v", l)
	}

	// Validation.
	bad := []struct {
		name string
		mod  func(*store.BillingExport)
	}{
		{"no tenant", func(e *store.BillingExport) { e.Tenant = "" }},
		{"bad meter", func(e *store.BillingExport) { e.Meter = "Bad" }},
		{"hour not aligned", func(e *store.BillingExport) { e.Hour = t0 }},
		{"zero hour", func(e *store.BillingExport) { e.Hour = time.Time{} }},
		{"no identifier", func(e *store.BillingExport) { e.Identifier = "" }},
		{"unknown status", func(e *store.BillingExport) { e.Status = "done" }},
		{"NaN value", func(e *store.BillingExport) { e.Value = math.NaN() }},
		{"negative attempts", func(e *store.BillingExport) { e.Attempts = -1 }},
	}
	for _, b := range bad {
		e := exp(acmeReq1, store.ExportSent, 1, hour(3), "")
		b.mod(&e)
		wantErr(t, "RecordExport("+b.name+")", s.RecordExport(ctx(t), e), store.ErrInvalid)
	}
	wantKeys(t, "after refused exports", mustCandidates(t, s, hour(2), 0), acmeReq1)
	_, err = s.ExportCandidates(ctx(t), time.Time{}, 0)
	wantErr(t, "ExportCandidates(zero before)", err, store.ErrInvalid)
}
