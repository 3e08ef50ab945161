package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

// route is one endpoint: the audit action it performs and the roles that
// may call it (nil roles: no authentication, e.g. /healthz).
type route struct {
	action string
	roles  []store.Role
	h      func(http.ResponseWriter, *http.Request, *call) error
	// quiet logs successful requests at debug level (frequent scrapes).
	quiet bool
}

// call is one request's identity and audit context.
type call struct {
	requestID string
	source    string
	action    string
	now       time.Time
	actor     string
	role      string
	// tenant and target are set by handlers as soon as they know them, so
	// a failed mutation is audited against the right resource.
	tenant, target string
}

// entry builds the audit entry for this call.
func (c *call) entry(outcome string, detail any) auditlog.Entry {
	e := auditlog.Entry{
		Time:      c.now,
		Actor:     c.actor,
		Role:      c.role,
		Action:    c.action,
		Tenant:    c.tenant,
		Target:    c.target,
		RequestID: c.requestID,
		Outcome:   outcome,
		Source:    c.source,
	}
	if detail != nil {
		e.Detail = marshalDetail(detail)
	}
	return e
}

// marshalDetail encodes an audit detail compactly and without HTML
// escaping, so reviewers read "<" rather than "\u003c".
func marshalDetail(v any) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

// statusWriter records the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (s *server) handle(mux *http.ServeMux, pattern string, rt route) {
	mux.HandleFunc(pattern, func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &call{
			requestID: newRequestID(),
			source:    r.RemoteAddr,
			action:    rt.action,
			now:       s.now().UTC(),
			actor:     "anonymous",
			role:      "anonymous",
		}
		w := &statusWriter{ResponseWriter: rw}
		w.Header().Set("X-Request-Id", c.requestID)
		err := s.serve(w, r, rt, c)
		if err != nil {
			s.writeError(w, r, c, err)
		}
		level := slog.LevelInfo
		if rt.quiet && w.status < 400 {
			level = slog.LevelDebug
		}
		if w.status >= 500 {
			level = slog.LevelError
		}
		s.log.LogAttrs(r.Context(), level, "http request",
			slog.String("request_id", c.requestID),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", w.status),
			slog.String("actor", c.actor),
			slog.String("source", c.source),
			slog.Duration("duration", time.Since(start)),
		)
	})
}

func (s *server) serve(w http.ResponseWriter, r *http.Request, rt route, c *call) error {
	if rt.roles == nil {
		return rt.h(w, r, c)
	}
	tok, reason := s.authenticate(r.Context(), r.Header.Get("Authorization"))
	if reason != "" {
		s.auditDenied(r.Context(), c, map[string]string{"reason": reason})
		w.Header().Set("WWW-Authenticate", `Bearer realm="attache"`)
		return &apiError{status: http.StatusUnauthorized, msg: "missing or invalid API token"}
	}
	c.actor, c.role = actorOf(tok), string(tok.Role)
	if !slices.Contains(rt.roles, tok.Role) {
		msg := fmt.Sprintf("role %s may not %s", tok.Role, rt.action)
		s.auditDenied(r.Context(), c, map[string]string{"reason": msg})
		return &apiError{status: http.StatusForbidden, msg: msg}
	}
	err := rt.h(w, r, c)
	if err != nil && r.Method != http.MethodGet {
		// A refused or failed mutation still leaves a trace. Successful
		// ones are audited by the store in the same transaction.
		var ae *apiError
		msg := "internal error"
		if errors.As(err, &ae) {
			msg = ae.msg
		}
		if _, aerr := s.cfg.Store.AppendAudit(r.Context(), c.entry(auditlog.OutcomeFailure, map[string]string{"error": msg})); aerr != nil {
			s.log.Error("audit append failed", "request_id", c.requestID, "err", aerr)
		}
	}
	return err
}

func (s *server) auditDenied(ctx context.Context, c *call, detail any) {
	if _, err := s.cfg.Store.AppendAudit(ctx, c.entry(auditlog.OutcomeDenied, detail)); err != nil {
		s.log.Error("audit append failed", "request_id", c.requestID, "err", err)
	}
}

func actorOf(t store.APIToken) string { return "apitoken:" + t.Name + "/" + t.ID }

// authenticate resolves a bearer header to a live API token. On failure it
// returns a reason fit for the audit trail (never the secret).
func (s *server) authenticate(ctx context.Context, header string) (store.APIToken, string) {
	if header == "" {
		return store.APIToken{}, "no Authorization header"
	}
	scheme, raw, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return store.APIToken{}, "Authorization is not a Bearer token"
	}
	id, secret, ok := parseAPIToken(strings.TrimSpace(raw))
	if !ok {
		return store.APIToken{}, "malformed API token"
	}
	hash := hashSecret(secret)
	tok, err := s.cfg.Store.APITokenByHash(ctx, hash)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("api token lookup failed", "err", err)
			return store.APIToken{}, "token lookup failed"
		}
		return store.APIToken{}, fmt.Sprintf("unknown or revoked API token %s", id)
	}
	idOK := subtle.ConstantTimeCompare([]byte(tok.ID), []byte(id))
	hashOK := subtle.ConstantTimeCompare(tok.SecretHash, hash)
	if idOK&hashOK != 1 {
		return store.APIToken{}, fmt.Sprintf("unknown or revoked API token %s", id)
	}
	return tok, ""
}

// API tokens are apiv1.TokenPrefix + "." + id + "." + secret, with id 16
// hex digits and secret 32 random bytes in unpadded base64url.
const (
	apiTokenIDBytes     = 8
	apiTokenSecretBytes = 32
)

func parseAPIToken(s string) (id, secret string, ok bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != apiv1.TokenPrefix {
		return "", "", false
	}
	id, secret = parts[1], parts[2]
	if len(id) != 2*apiTokenIDBytes || !isHex(id) {
		return "", "", false
	}
	if b, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(b) != apiTokenSecretBytes {
		return "", "", false
	}
	return id, secret, true
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// newAPIToken mints a token; it returns the full token string and the
// stored half.
func newAPIToken(name string, role store.Role, createdBy string, now time.Time) (string, store.APIToken) {
	id := randomHex(apiTokenIDBytes)
	sec := make([]byte, apiTokenSecretBytes)
	rand.Read(sec) // never fails (crypto/rand, Go 1.24+)
	secret := base64.RawURLEncoding.EncodeToString(sec)
	return apiv1.TokenPrefix + "." + id + "." + secret, store.APIToken{
		ID:         id,
		Name:       name,
		Role:       role,
		SecretHash: hashSecret(secret),
		CreatedBy:  createdBy,
		CreatedAt:  now,
	}
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newRequestID() string { return randomHex(12) }
