package storetest

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"attache.dev/attache/controlplane/store"
)

func mustEvents(t *testing.T, s store.Store, k store.AgentKey, limit int) []store.HealthEvent {
	t.Helper()
	es, err := s.HealthEvents(ctx(t), k, limit)
	if err != nil {
		t.Fatalf("HealthEvents(%v): %v", k, err)
	}
	return es
}

// testRecordHealth: an event is appended only when a component's status
// changes; messages alone and stale reports add none.
func testRecordHealth(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	mustAgent(t, s, "acme", "a2")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	ev := func(min int, comp, status, msg string) store.HealthEvent {
		return store.HealthEvent{AgentKey: k, At: micro(at(min)), Component: comp, Status: status, Message: msg}
	}
	steps := []struct {
		name string
		at   time.Time
		cs   []store.ComponentState
		add  []store.HealthEvent // new events, newest first
	}{
		{"first report: every component is new", at(0), []store.ComponentState{
			{Name: "api", Status: "HEALTHY"}, {Name: "db", Status: "HEALTHY", Message: "ok"},
		}, []store.HealthEvent{ev(0, "db", "HEALTHY", "ok"), ev(0, "api", "HEALTHY", "")}},
		{"same states", at(1), []store.ComponentState{
			{Name: "api", Status: "HEALTHY"}, {Name: "db", Status: "HEALTHY", Message: "ok"},
		}, nil},
		{"message only", at(2), []store.ComponentState{{Name: "db", Status: "HEALTHY", Message: "lag 3s"}}, nil},
		{"status change", at(3), []store.ComponentState{{Name: "db", Status: "DEGRADED", Message: "lag 30s"}},
			[]store.HealthEvent{ev(3, "db", "DEGRADED", "lag 30s")}},
		// Older than db's last change (minute 3), newer than api's (minute 0).
		{"stale for one component", at(2), []store.ComponentState{
			{Name: "db", Status: "HEALTHY"}, {Name: "api", Status: "UNHEALTHY", Message: "down"},
		}, []store.HealthEvent{ev(2, "api", "UNHEALTHY", "down")}},
		{"new component, others omitted", at(4), []store.ComponentState{{Name: "cache", Status: "HEALTHY"}},
			[]store.HealthEvent{ev(4, "cache", "HEALTHY", "")}},
		{"empty report", at(5), nil, nil},
		{"back to healthy", at(6), []store.ComponentState{
			{Name: "api", Status: "HEALTHY"}, {Name: "db", Status: "DEGRADED", Message: "lag 20s"},
		}, []store.HealthEvent{ev(6, "api", "HEALTHY", "")}},
	}
	var want []store.HealthEvent
	for _, st := range steps {
		if err := s.RecordHealth(ctx(t), k, st.at, st.cs); err != nil {
			t.Fatalf("%s: RecordHealth: %v", st.name, err)
		}
		want = append(append([]store.HealthEvent{}, st.add...), want...)
		// Newest first by time: the stale step's event sorts below minute 3.
		got := mustEvents(t, s, k, 0)
		sortEvents(want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: HealthEvents =\n %+v\nwant\n %+v", st.name, got, want)
		}
	}
	if got := mustEvents(t, s, k, 2); !reflect.DeepEqual(got, want[:2]) {
		t.Errorf("HealthEvents(limit 2) = %+v, want %+v", got, want[:2])
	}
	if got := mustEvents(t, s, store.AgentKey{Tenant: "acme", ID: "a2"}, 0); len(got) != 0 {
		t.Errorf("another agent's events: %+v", got)
	}

	wantErr(t, "RecordHealth(unknown agent)", s.RecordHealth(ctx(t), store.AgentKey{Tenant: "acme", ID: "nope"}, t0, nil), store.ErrNotFound)
	wantErr(t, "RecordHealth(agent under another tenant)", s.RecordHealth(ctx(t), store.AgentKey{Tenant: "beta", ID: "a1"}, t0,
		[]store.ComponentState{{Name: "api", Status: "HEALTHY"}}), store.ErrNotFound)

	// A long message is cut to valid UTF-8 instead of refusing the report.
	k2 := store.AgentKey{Tenant: "acme", ID: "a2"}
	long := strings.Repeat("é", store.MaxHealthMessage) // 2 bytes each
	if err := s.RecordHealth(ctx(t), k2, t0, []store.ComponentState{{Name: "api", Status: "UNHEALTHY", Message: long}}); err != nil {
		t.Fatal(err)
	}
	got := mustEvents(t, s, k2, 0)
	if len(got) != 1 || len(got[0].Message) > store.MaxHealthMessage || !utf8.ValidString(got[0].Message) || !strings.HasPrefix(long, got[0].Message) ||
		len(got[0].Message) < store.MaxHealthMessage-4 {
		t.Errorf("long message stored as %d bytes (valid UTF-8: %v)", len(got[0].Message), utf8.ValidString(got[0].Message))
	}
}

// testRecordHealthDrift: drift is recorded with its detail; drift
// appearing or clearing appends an event like a status change, the same
// drift with another detail does not; a long detail is cut to valid UTF-8.
func testRecordHealthDrift(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	ev := func(min int, comp, status string, drift bool, detail string) store.HealthEvent {
		return store.HealthEvent{AgentKey: k, At: micro(at(min)), Component: comp, Status: status, Message: "ok", Drift: drift, DriftDetail: detail}
	}
	state := func(comp, status string, drift bool, detail string) store.ComponentState {
		return store.ComponentState{Name: comp, Status: status, Message: "ok", Drift: drift, DriftDetail: detail}
	}
	steps := []struct {
		name string
		at   time.Time
		cs   []store.ComponentState
		add  []store.HealthEvent // new events, newest first
	}{
		{"first report, one component drifted", at(0), []store.ComponentState{
			state("app", "healthy", true, "replicas: plan 3, live 5"), state("db", "healthy", false, ""),
		}, []store.HealthEvent{ev(0, "db", "healthy", false, ""), ev(0, "app", "healthy", true, "replicas: plan 3, live 5")}},
		{"same drift, same detail", at(1), []store.ComponentState{
			state("app", "healthy", true, "replicas: plan 3, live 5"), state("db", "healthy", false, ""),
		}, nil},
		{"same drift, another detail", at(2), []store.ComponentState{state("app", "healthy", true, "replicas: plan 3, live 4")}, nil},
		{"drift appears", at(3), []store.ComponentState{state("db", "healthy", true, "max_connections: plan 100, live 200")},
			[]store.HealthEvent{ev(3, "db", "healthy", true, "max_connections: plan 100, live 200")}},
		{"drift cleared", at(4), []store.ComponentState{state("app", "healthy", false, "")},
			[]store.HealthEvent{ev(4, "app", "healthy", false, "")}},
		{"stale drift", at(3), []store.ComponentState{state("app", "healthy", true, "replicas: plan 3, live 9")}, nil},
		{"status and drift change at once", at(5), []store.ComponentState{state("db", "degraded", false, "")},
			[]store.HealthEvent{ev(5, "db", "degraded", false, "")}},
		// The detail of minute 2 was stored without an event: the event
		// of drift appearing again carries the new one.
		{"drift again", at(6), []store.ComponentState{state("app", "healthy", true, "image: plan v1, live v2")},
			[]store.HealthEvent{ev(6, "app", "healthy", true, "image: plan v1, live v2")}},
	}
	var want []store.HealthEvent
	for _, st := range steps {
		if err := s.RecordHealth(ctx(t), k, st.at, st.cs); err != nil {
			t.Fatalf("%s: RecordHealth: %v", st.name, err)
		}
		want = append(append([]store.HealthEvent{}, st.add...), want...)
		if got := mustEvents(t, s, k, 0); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: HealthEvents =\n %+v\nwant\n %+v", st.name, got, want)
		}
	}

	long := strings.Repeat("é", store.MaxHealthMessage) // 2 bytes each
	if err := s.RecordHealth(ctx(t), k, at(7), []store.ComponentState{state("app", "healthy", false, ""), state("cache", "healthy", true, long)}); err != nil {
		t.Fatal(err)
	}
	got := mustEvents(t, s, k, 2)
	if len(got) != 2 || got[0].Component != "cache" || !got[0].Drift || got[1].Component != "app" || got[1].Drift {
		t.Fatalf("events at minute 7: %+v", got)
	}
	if d := got[0].DriftDetail; len(d) > store.MaxHealthMessage || len(d) < store.MaxHealthMessage-4 || !utf8.ValidString(d) || !strings.HasPrefix(long, d) {
		t.Errorf("long drift detail stored as %d bytes (valid UTF-8: %v)", len(d), utf8.ValidString(d))
	}
}

func sortEvents(es []store.HealthEvent) {
	// Stable: events with equal times keep their (newest-first) order.
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].At.After(es[j-1].At); j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// testRecordHealthValidation: bad components refuse the report, naming
// the component's index and field, and store nothing.
func testRecordHealthValidation(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	ok := store.ComponentState{Name: "api", Status: "HEALTHY"}
	tests := []struct {
		name string
		at   time.Time
		cs   []store.ComponentState
		want []string
	}{
		{"empty name", t0, []store.ComponentState{ok, {Status: "HEALTHY"}}, []string{"component 1", "name"}},
		{"long name", t0, []store.ComponentState{ok, {Name: strings.Repeat("n", store.MaxHealthName+1), Status: "HEALTHY"}}, []string{"component 1", "name"}},
		{"name twice", t0, []store.ComponentState{ok, {Name: "db", Status: "HEALTHY"}, ok}, []string{"component 2", `name "api"`}},
		{"empty status", t0, []store.ComponentState{ok, {Name: "db"}}, []string{"component 1", "status"}},
		{"long status", t0, []store.ComponentState{{Name: "db", Status: strings.Repeat("S", store.MaxHealthStatus+1)}}, []string{"component 0", "status"}},
		{"status not UTF-8", t0, []store.ComponentState{{Name: "db", Status: "\xff"}}, []string{"component 0", "status"}},
		{"zero time", time.Time{}, []store.ComponentState{ok}, []string{"time"}},
		{"too many components", t0, make([]store.ComponentState, store.MaxHealthComponents+1), []string{"1001 components"}},
	}
	for _, tt := range tests {
		err := s.RecordHealth(ctx(t), k, tt.at, tt.cs)
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
	if got := mustEvents(t, s, k, 0); len(got) != 0 {
		t.Errorf("refused reports stored events: %+v", got)
	}
}
