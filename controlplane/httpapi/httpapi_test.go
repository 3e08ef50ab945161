package httpapi_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
)

func TestHealthzNeedsNoToken(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/healthz", "", "").wantStatus(http.StatusOK)
	if r.json["status"] != "ok" {
		t.Fatalf("body = %s", r.raw)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Fatal("no X-Request-Id")
	}
}

func TestUnknownRouteAndMethodAreJSON(t *testing.T) {
	e := newEnv(t)
	e.do("GET", "/v1/nope", e.admin, "").wantStatus(http.StatusNotFound)
	r := e.do("DELETE", "/v1/tenants", e.admin, "").wantStatus(http.StatusMethodNotAllowed)
	if r.header.Get("Allow") == "" {
		t.Fatal("405 without Allow header")
	}
}

func TestTenants(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/v1/tenants", e.operator,
		`{"name":"acme","display_name":"Acme Corp","labels":{"tier":"silo","example.com/region":"eu-west-1"}}`).
		wantStatus(http.StatusCreated)
	var created apiv1.Tenant
	mustUnmarshal(t, r.raw, &created)
	if created.Name != "acme" || created.DisplayName != "Acme Corp" || created.Labels["tier"] != "silo" || created.CreatedAt.IsZero() {
		t.Fatalf("created = %+v", created)
	}

	rec := e.lastAudit()
	if rec.Action != "tenant.create" || rec.Outcome != auditlog.OutcomeSuccess || rec.Tenant != "acme" ||
		rec.Role != "operator" || !strings.Contains(rec.Actor, "ops") || rec.RequestID != r.header.Get("X-Request-Id") || rec.Source == "" {
		t.Fatalf("audit record = %+v", rec)
	}

	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantError(http.StatusConflict, "already exists")
	if rec := e.lastAudit(); rec.Action != "tenant.create" || rec.Outcome != auditlog.OutcomeFailure {
		t.Fatalf("failed create audited as %+v", rec)
	}
	e.do("POST", "/v1/tenants", e.admin, `{"name":"globex"}`).wantStatus(http.StatusCreated)

	var got apiv1.Tenant
	mustUnmarshal(t, e.do("GET", "/v1/tenants/acme", e.auditor, "").wantStatus(http.StatusOK).raw, &got)
	if got.Name != "acme" || got.Labels["example.com/region"] != "eu-west-1" {
		t.Fatalf("get = %+v", got)
	}
	e.do("GET", "/v1/tenants/initech", e.auditor, "").wantError(http.StatusNotFound, "tenant initech not found")

	var list apiv1.TenantList
	mustUnmarshal(t, e.do("GET", "/v1/tenants", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Tenants) != 2 {
		t.Fatalf("list = %+v", list)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		contains                 string
	}{
		{"unknown field", "POST", "/v1/tenants", `{"name":"x","colour":"red"}`, 400, `unknown field "colour"`},
		{"wrong type", "POST", "/v1/tenants", `{"name":"x","labels":["a"]}`, 400, `field "labels"`},
		{"not an object", "POST", "/v1/tenants", `["x"]`, 400, "JSON object"},
		{"malformed", "POST", "/v1/tenants", `{"name":`, 400, "malformed JSON"},
		{"trailing data", "POST", "/v1/tenants", `{"name":"x"} {}`, 400, "single JSON object"},
		{"empty body", "POST", "/v1/tenants", ``, 400, "empty body"},
		{"too large", "POST", "/v1/tenants", `{"name":"x","display_name":"` + strings.Repeat("a", 1<<20) + `"}`, 413, "larger than"},
		{"name upper case", "POST", "/v1/tenants", `{"name":"Acme"}`, 400, "name:"},
		{"name empty", "POST", "/v1/tenants", `{"name":""}`, 400, "name:"},
		{"name leading dash", "POST", "/v1/tenants", `{"name":"-acme"}`, 400, "name:"},
		{"name trailing dash", "POST", "/v1/tenants", `{"name":"acme-"}`, 400, "name:"},
		{"name too long", "POST", "/v1/tenants", `{"name":"` + strings.Repeat("a", 64) + `"}`, 400, "name:"},
		{"name with dot", "POST", "/v1/tenants", `{"name":"a.b"}`, 400, "name:"},
		{"label key bad", "POST", "/v1/tenants", `{"name":"x","labels":{"-k":"v"}}`, 400, "labels:"},
		{"label value bad", "POST", "/v1/tenants", `{"name":"x","labels":{"k":"v v"}}`, 400, "labels:"},
		{"label prefix bad", "POST", "/v1/tenants", `{"name":"x","labels":{"Ex_ample/k":"v"}}`, 400, "labels:"},
		{"display name control", "POST", "/v1/tenants", `{"name":"x","display_name":"a\u0007b"}`, 400, "display_name:"},
		{"ttl not a duration", "POST", "/v1/tokens", `{"tenant":"acme","ttl":"soon"}`, 400, "ttl:"},
		{"ttl zero", "POST", "/v1/tokens", `{"tenant":"acme","ttl":"0s"}`, 400, "ttl:"},
		{"ttl negative", "POST", "/v1/tokens", `{"tenant":"acme","ttl":"-1h"}`, 400, "ttl:"},
		{"ttl over max", "POST", "/v1/tokens", `{"tenant":"acme","ttl":"25h"}`, 400, "ttl:"},
		{"token tenant bad", "POST", "/v1/tokens", `{"tenant":"Acme"}`, 400, "tenant:"},
		{"token unknown tenant", "POST", "/v1/tokens", `{"tenant":"initech"}`, 404, "tenant initech not found"},
		{"apitoken bad role", "POST", "/v1/apitokens", `{"name":"x","role":"root"}`, 400, "role:"},
		{"apitoken bad name", "POST", "/v1/apitokens", `{"name":"a b","role":"auditor"}`, 400, "name:"},
		{"audit bad after", "GET", "/v1/audit?after=-1", ``, 400, "after:"},
		{"audit bad limit", "GET", "/v1/audit?limit=5000", ``, 400, "limit:"},
		{"agents bad tenant", "GET", "/v1/agents?tenant=A_B", ``, 400, "tenant:"},
		{"agent path bad tenant", "GET", "/v1/agents/A_B/a1", ``, 400, "tenant:"},
		{"revoke id too long", "POST", "/v1/agents/acme/" + strings.Repeat("x", 129) + "/revoke", ``, 400, "id:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.do(tc.method, tc.path, e.admin, tc.body).wantError(tc.status, tc.contains)
		})
	}
	var list apiv1.TenantList
	mustUnmarshal(t, e.do("GET", "/v1/tenants", e.admin, "").raw, &list)
	if len(list.Tenants) != 1 {
		t.Fatalf("bad requests created tenants: %+v", list.Tenants)
	}
}

func TestRoleMatrix(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)
	tokens := map[string]string{"admin": e.admin, "operator": e.operator, "auditor": e.auditor}
	names := map[string]string{"admin": httpapi.BootstrapTokenName, "operator": "ops", "auditor": "reviewer"}

	type want map[string]int // role -> status; missing roles get 403
	for _, rt := range []struct {
		method, path, action string
		body                 func(role string) string
		want                 want
	}{
		{"POST", "/v1/tenants", "tenant.create", func(r string) string { return `{"name":"t-` + r + `"}` }, want{"admin": 201, "operator": 201}},
		{"GET", "/v1/tenants", "tenant.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/tenants/acme", "tenant.get", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"POST", "/v1/tokens", "jointoken.create", func(string) string { return `{"tenant":"acme"}` }, want{"admin": 201, "operator": 201}},
		{"GET", "/v1/agents", "agent.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/agents/acme/a1", "agent.get", nil, want{"admin": 404, "operator": 404, "auditor": 404}},
		{"POST", "/v1/agents/acme/a1/revoke", "agent.revoke", func(string) string { return `{}` }, want{"admin": 404, "operator": 404}},
		{"GET", "/v1/audit", "audit.list", nil, want{"admin": 200, "auditor": 200}},
		{"POST", "/v1/apitokens", "apitoken.create", func(r string) string { return `{"name":"x-` + r + `","role":"auditor"}` }, want{"admin": 201}},
		{"GET", "/v1/apitokens", "apitoken.list", nil, want{"admin": 200}},
		// acme has no agent, so a permitted submission fails with 409.
		{"POST", "/v1/plans", "plan.submit", func(string) string { return `{"tenant":"acme","yaml":"` + oneStepYAML + `"}` }, want{"admin": 409, "operator": 409}},
		{"GET", "/v1/plans", "plan.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/plans/p1", "plan.get", nil, want{"admin": 404, "operator": 404, "auditor": 404}},
		{"GET", "/v1/usage?tenant=acme", "usage.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/health", "health.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/agents/acme/a1/health", "agent.health", nil, want{"admin": 404, "operator": 404, "auditor": 404}},
		{"PATCH", "/v1/tenants/acme", "tenant.update", func(string) string { return `{"tier":"silo"}` }, want{"admin": 200, "operator": 200}},
		{"POST", "/v1/releases", "release.push", func(string) string { return `{"envelope":{}}` }, want{"admin": 400, "operator": 400}},
		{"GET", "/v1/releases", "release.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/releases/1.0.0", "release.get", nil, want{"admin": 404, "operator": 404, "auditor": 404}},
		{"GET", "/v1/tenants/acme/flags", "flag.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"PUT", "/v1/tenants/acme/flags", "flag.set", func(string) string { return `{"set":{"a":"b"}}` }, want{"admin": 200, "operator": 200}},
		{"POST", "/v1/rollouts/ro-x/flags", "flag.set", func(string) string { return `{"wave":0,"set":{"a":"b"}}` }, want{"admin": 404, "operator": 404}},
		{"POST", "/v1/rollouts", "rollout.start", func(string) string { return `{"release":"1.0.0","selector":"all","waves":"100%"}` }, want{"admin": 404, "operator": 404}},
		{"GET", "/v1/rollouts", "rollout.list", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"GET", "/v1/rollouts/ro-x", "rollout.get", nil, want{"admin": 404, "operator": 404, "auditor": 404}},
		{"POST", "/v1/rollouts/ro-x/pause", "rollout.pause", nil, want{"admin": 404, "operator": 404}},
		{"POST", "/v1/rollouts/ro-x/resume", "rollout.resume", nil, want{"admin": 404, "operator": 404}},
		{"POST", "/v1/rollouts/ro-x/abort", "rollout.abort", nil, want{"admin": 404, "operator": 404}},
		{"GET", "/v1/freeze", "fleet.freeze_status", nil, want{"admin": 200, "operator": 200, "auditor": 200}},
		{"POST", "/v1/freeze", "fleet.freeze", func(string) string { return `{"reason":"drill"}` }, want{"admin": 200, "operator": 200}},
		{"DELETE", "/v1/freeze", "fleet.unfreeze", nil, want{"admin": 200, "operator": 200}},
	} {
		for _, role := range []string{"admin", "operator", "auditor"} {
			t.Run(rt.action+"/"+role, func(t *testing.T) {
				body := ""
				if rt.body != nil {
					body = rt.body(role)
				}
				status, ok := rt.want[role]
				if ok {
					e.do(rt.method, rt.path, tokens[role], body).wantStatus(status)
					return
				}
				r := e.do(rt.method, rt.path, tokens[role], body).
					wantError(http.StatusForbidden, fmt.Sprintf("role %s may not %s", role, rt.action))
				rec := e.lastAudit()
				if rec.Outcome != auditlog.OutcomeDenied || rec.Action != rt.action || rec.Role != role ||
					!strings.Contains(rec.Actor, names[role]) || rec.RequestID != r.header.Get("X-Request-Id") {
					t.Fatalf("denied request audited as %+v", rec)
				}
			})
		}
	}
}

func TestUnauthenticated(t *testing.T) {
	e := newEnv(t)
	// A well-formed token the server never issued.
	forged := apiv1.TokenPrefix + ".0123456789abcdef." + base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for _, tc := range []struct{ name, header string }{
		{"missing", ""},
		{"not bearer", "Basic dXNlcjpwYXNz"},
		{"malformed", "Bearer hello"},
		{"unknown", "Bearer " + forged},
		{"admin token tampered", "Bearer " + e.admin[:len(e.admin)-2] + "AA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.srv.URL+"/v1/tenants", strings.NewReader(`{"name":"acme"}`))
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("status = %d, WWW-Authenticate = %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			rec := e.lastAudit()
			if rec.Outcome != auditlog.OutcomeDenied || rec.Action != "tenant.create" || rec.Actor != "anonymous" ||
				rec.RequestID != resp.Header.Get("X-Request-Id") {
				t.Fatalf("audit = %+v", rec)
			}
			if strings.Contains(string(rec.Detail), e.admin[len(apiv1.TokenPrefix)+18:]) {
				t.Fatal("audit detail holds the secret")
			}
		})
	}
}

func TestJoinToken(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)

	r := e.do("POST", "/v1/tokens", e.operator, `{"tenant":"acme","ttl":"2h"}`).wantStatus(http.StatusCreated)
	var jt apiv1.JoinToken
	mustUnmarshal(t, r.raw, &jt)
	tok, err := jointoken.Parse(jt.Token)
	if err != nil {
		t.Fatalf("jointoken.Parse: %v", err)
	}
	if tok.ID != jt.ID || tok.Addr != "cp.attache.test:7444" || tok.TrustDomain != "attache.test" ||
		tok.CAKeySHA256 != testCAKey || tok.TrustRootSHA256 != testTrustRoot || jt.Tenant != "acme" {
		t.Fatalf("token = %+v, response = %+v", tok, jt)
	}
	if want := e.clock.Now().Add(2 * time.Hour); jt.ExpiresAt.Sub(want).Abs() > time.Second {
		t.Fatalf("expires_at = %v, want %v", jt.ExpiresAt, want)
	}

	stored, err := e.store.GetJoinToken(context.Background(), tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Tenant != "acme" || string(stored.SecretHash) != string(tok.SecretHash()) || !strings.Contains(stored.CreatedBy, "ops") {
		t.Fatalf("stored = %+v", stored)
	}

	rec := e.lastAudit()
	if rec.Action != "jointoken.create" || rec.Tenant != "acme" || rec.Target != tok.ID || rec.Outcome != auditlog.OutcomeSuccess {
		t.Fatalf("audit = %+v", rec)
	}
	raw, _ := json.Marshal(rec)
	for _, enc := range secretEncodings(tok.Secret) {
		if strings.Contains(string(raw), enc) || strings.Contains(e.logs.String(), enc) {
			t.Fatalf("join token secret leaked into the audit trail or logs")
		}
	}
	if strings.Contains(e.logs.String(), jt.Token) {
		t.Fatal("join token in logs")
	}

	// Default TTL is an hour.
	mustUnmarshal(t, e.do("POST", "/v1/tokens", e.operator, `{"tenant":"acme"}`).wantStatus(http.StatusCreated).raw, &jt)
	if want := e.clock.Now().Add(time.Hour); jt.ExpiresAt.Sub(want).Abs() > time.Second {
		t.Fatalf("default expiry = %v, want %v", jt.ExpiresAt, want)
	}
}

func secretEncodings(b []byte) []string {
	return []string{
		base64.RawURLEncoding.EncodeToString(b),
		base64.StdEncoding.EncodeToString(b),
		hex.EncodeToString(b),
	}
}

// enroll runs the real enrollment path: mint a join token over the API and
// consume it in the store.
func (e *env) enroll(tenant, id string) {
	e.t.Helper()
	r := e.do("POST", "/v1/tokens", e.operator, `{"tenant":"`+tenant+`"}`).wantStatus(http.StatusCreated)
	tok, err := jointoken.Parse(r.json["token"].(string))
	if err != nil {
		e.t.Fatal(err)
	}
	now := e.clock.Now()
	_, err = e.store.Enroll(context.Background(), tok.ID, tok.SecretHash(), now, store.Agent{
		Tenant:        tenant,
		ID:            id,
		SPIFFEID:      "spiffe://attache.test/tenant/" + tenant + "/agent/" + id,
		Hostname:      "host-" + id,
		EnrolledAt:    now,
		CertSerial:    "01",
		CertExpiresAt: now.Add(time.Hour),
	}, auditlog.Entry{Time: now, Actor: "spiffe://attache.test/tenant/" + tenant + "/agent/" + id, Role: "agent",
		Action: "agent.enroll", Tenant: tenant, Target: id, Outcome: auditlog.OutcomeSuccess})
	if err != nil {
		e.t.Fatalf("Enroll: %v", err)
	}
}

func (e *env) agent(tenant, id string) apiv1.Agent {
	e.t.Helper()
	var a apiv1.Agent
	mustUnmarshal(e.t, e.do("GET", "/v1/agents/"+tenant+"/"+id, e.auditor, "").wantStatus(http.StatusOK).raw, &a)
	return a
}

func TestAgents(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, n := range []string{"acme", "globex"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
	}
	e.enroll("acme", "a1")
	e.enroll("acme", "a2")
	e.enroll("globex", "g1")

	if a := e.agent("acme", "a1"); a.Status != apiv1.AgentNeverConnected || a.Hostname != "host-a1" || a.SPIFFEID == "" {
		t.Fatalf("fresh agent = %+v", a)
	}

	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	if err := e.store.RecordSessions(ctx, []store.SessionUpdate{{AgentKey: k, SessionID: "s1", Connected: true, At: e.clock.Now(), Version: "1.2.3"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.RecordHeartbeats(ctx, []store.Heartbeat{{AgentKey: k, At: e.clock.Now()}}); err != nil {
		t.Fatal(err)
	}
	if a := e.agent("acme", "a1"); a.Status != apiv1.AgentConnected || a.Version != "1.2.3" || a.LastSeenAt == nil {
		t.Fatalf("connected agent = %+v", a)
	}
	e.clock.Advance(httpapi.ConnectedWindow(0) + time.Second)
	if a := e.agent("acme", "a1"); a.Status != apiv1.AgentDisconnected {
		t.Fatalf("stale agent status = %q, want disconnected", a.Status)
	}

	var list apiv1.AgentList
	mustUnmarshal(t, e.do("GET", "/v1/agents?tenant=acme", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Agents) != 2 {
		t.Fatalf("acme agents = %+v", list.Agents)
	}
	mustUnmarshal(t, e.do("GET", "/v1/agents", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Agents) != 3 {
		t.Fatalf("all agents = %+v", list.Agents)
	}
	e.do("GET", "/v1/agents/globex/a1", e.auditor, "").wantError(http.StatusNotFound, "agent globex/a1 not found")

	// Revoke, twice: the first time sticks, both are audited.
	r := e.do("POST", "/v1/agents/acme/a1/revoke", e.operator, "").wantStatus(http.StatusOK)
	var revoked apiv1.Agent
	mustUnmarshal(t, r.raw, &revoked)
	if revoked.Status != apiv1.AgentRevoked || revoked.RevokedAt == nil || !strings.Contains(revoked.RevokedBy, "ops") {
		t.Fatalf("revoked = %+v", revoked)
	}
	rec := e.lastAudit()
	if rec.Action != "agent.revoke" || rec.Tenant != "acme" || rec.Target != "a1" || rec.Outcome != auditlog.OutcomeSuccess {
		t.Fatalf("audit = %+v", rec)
	}
	first := *revoked.RevokedAt
	e.clock.Advance(time.Minute)
	mustUnmarshal(t, e.do("POST", "/v1/agents/acme/a1/revoke", e.admin, "").wantStatus(http.StatusOK).raw, &revoked)
	if !revoked.RevokedAt.Equal(first) {
		t.Fatalf("second revoke moved revoked_at from %v to %v", first, revoked.RevokedAt)
	}
	if a := e.agent("acme", "a1"); a.Status != apiv1.AgentRevoked {
		t.Fatalf("status after revoke = %q", a.Status)
	}
	e.do("POST", "/v1/agents/acme/nope/revoke", e.admin, "").wantError(http.StatusNotFound, "agent acme/nope not found")
}

func TestAuditPaging(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"acme", "globex", "initech"} {
		// Characters JSON encoders like to escape must survive the trip.
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`","display_name":"<`+n+`> & Söhne \u2028"}`).wantStatus(http.StatusCreated)
	}
	e.do("POST", "/v1/tenants", e.auditor, `{"name":"nope"}`).wantStatus(http.StatusForbidden)

	var all []auditlog.Record
	var head apiv1.AuditHead
	after := uint64(0)
	for {
		var page apiv1.AuditPage
		mustUnmarshal(t, e.do("GET", fmt.Sprintf("/v1/audit?after=%d&limit=2", after), e.auditor, "").wantStatus(http.StatusOK).raw, &page)
		if head.Seq == 0 {
			head = page.Head
		}
		if len(page.Records) == 0 {
			break
		}
		if len(page.Records) > 2 {
			t.Fatalf("page of %d records with limit=2", len(page.Records))
		}
		all = append(all, page.Records...)
		after = page.Records[len(page.Records)-1].Seq
	}
	// bootstrap + 2 apitokens + 3 tenants + 1 denied
	if len(all) != 7 || head.Seq != 7 {
		t.Fatalf("got %d records, head %d; want 7", len(all), head.Seq)
	}
	if p := auditlog.Verify(all, 0, auditlog.GenesisHash, head.Seq, head.Hash); p != nil {
		t.Fatalf("verify over the API: %v", p)
	}
	if !strings.Contains(string(all[3].Detail), "<acme> & Söhne") {
		t.Fatalf("detail stored escaped: %s", all[3].Detail)
	}
	if all[0].Action != "apitoken.bootstrap" || all[6].Outcome != auditlog.OutcomeDenied {
		t.Fatalf("first %+v last %+v", all[0], all[6])
	}

	var page apiv1.AuditPage
	mustUnmarshal(t, e.do("GET", "/v1/audit?tenant=globex", e.admin, "").wantStatus(http.StatusOK).raw, &page)
	if len(page.Records) != 1 || page.Records[0].Tenant != "globex" {
		t.Fatalf("tenant filter: %+v", page.Records)
	}
}

func TestAPITokens(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/v1/apitokens", e.admin, `{"name":"ci","role":"operator"}`).wantStatus(http.StatusCreated)
	var nt apiv1.NewAPIToken
	mustUnmarshal(t, r.raw, &nt)
	if nt.Name != "ci" || nt.Role != "operator" || !strings.HasPrefix(nt.Token, apiv1.TokenPrefix+"."+nt.ID+".") {
		t.Fatalf("new token = %+v", nt)
	}
	rec := e.lastAudit()
	if rec.Action != "apitoken.create" || rec.Target != nt.ID || strings.Contains(string(rec.Detail), nt.Token) {
		t.Fatalf("audit = %+v", rec)
	}
	// The new token works, with its role.
	e.do("POST", "/v1/tenants", nt.Token, `{"name":"acme"}`).wantStatus(http.StatusCreated)
	if rec := e.lastAudit(); rec.Actor != "apitoken:ci/"+nt.ID || rec.Role != "operator" {
		t.Fatalf("actor = %q role = %q", rec.Actor, rec.Role)
	}
	e.do("GET", "/v1/apitokens", nt.Token, "").wantStatus(http.StatusForbidden)

	r = e.do("GET", "/v1/apitokens", e.admin, "").wantStatus(http.StatusOK)
	if strings.Contains(string(r.raw), "secret") || strings.Contains(string(r.raw), nt.Token) {
		t.Fatalf("list leaks secrets: %s", r.raw)
	}
	var list apiv1.APITokenList
	mustUnmarshal(t, r.raw, &list)
	if len(list.Tokens) != 4 {
		t.Fatalf("tokens = %+v", list.Tokens)
	}
	for _, secret := range []string{e.admin, e.operator, e.auditor, nt.Token} {
		if strings.Contains(e.logs.String(), secret) {
			t.Fatal("API token in server logs")
		}
	}
}

func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()

	// A stray file is never overwritten, even with an empty store.
	stray := filepath.Join(dir, "stray.token")
	os.WriteFile(stray, []byte("keep me\n"), 0o600)
	if created, err := httpapi.Bootstrap(ctx, st, stray, now); err == nil || created {
		t.Fatalf("Bootstrap over an existing file = %v, %v; want error", created, err)
	}
	if b, _ := os.ReadFile(stray); string(b) != "keep me\n" {
		t.Fatalf("stray file overwritten: %q", b)
	}

	path := filepath.Join(dir, "admin.token")
	created, err := httpapi.Bootstrap(ctx, st, path, now)
	if err != nil || !created {
		t.Fatalf("Bootstrap = %v, %v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", fi.Mode().Perm())
	}
	first, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(first), apiv1.TokenPrefix+".") {
		t.Fatalf("token file = %q", first)
	}

	// Second run: a token exists, nothing changes.
	if created, err := httpapi.Bootstrap(ctx, st, path, now); err != nil || created {
		t.Fatalf("second Bootstrap = %v, %v; want false, nil", created, err)
	}
	if again, _ := os.ReadFile(path); string(again) != string(first) {
		t.Fatal("token file rewritten")
	}
	toks, _ := st.ListAPITokens(ctx)
	if len(toks) != 1 || toks[0].Role != store.RoleAdmin {
		t.Fatalf("tokens = %+v", toks)
	}
	recs, _ := st.ListAudit(ctx, store.AuditFilter{})
	if len(recs) != 1 || recs[0].Action != "apitoken.bootstrap" || recs[0].Target != toks[0].ID || strings.Contains(string(recs[0].Detail), strings.TrimSpace(string(first))) {
		t.Fatalf("audit = %+v", recs)
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}
