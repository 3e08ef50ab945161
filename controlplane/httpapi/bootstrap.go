package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/securefile"
)

// BootstrapTokenName is the name of the first admin API token.
const BootstrapTokenName = "bootstrap-admin"

// Bootstrap creates the first admin API token when the store has none and
// writes it, followed by a newline, to path with mode 0600. The file is
// created exclusively and never overwritten: if it already exists while the
// store has no token, Bootstrap fails rather than guess. It reports whether
// it created a token. The creation is audited as "apitoken.bootstrap".
//
// Run it once at control-plane start, before serving. Two replicas racing on
// an empty PostgreSQL store could each create one; start the first replica
// alone.
func Bootstrap(ctx context.Context, s store.Store, path string, now time.Time) (bool, error) {
	existing, err := s.ListAPITokens(ctx)
	if err != nil {
		return false, fmt.Errorf("bootstrap: list API tokens: %w", err)
	}
	if len(existing) > 0 {
		return false, nil
	}
	now = now.UTC()
	secret, t := newAPIToken(BootstrapTokenName, store.RoleAdmin, "system", now)

	// Write the file first: a token in the store that nobody holds would
	// lock everyone out, since Bootstrap never runs again.
	if err := securefile.Create(path, []byte(secret+"\n")); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, fmt.Errorf("bootstrap: %s already exists but the store has no API token; move it away to bootstrap again", path)
		}
		return false, fmt.Errorf("bootstrap: %w", err)
	}

	detail := marshalDetail(map[string]string{"name": t.Name, "role": string(t.Role), "file": path})
	e := auditlog.Entry{
		Time:    now,
		Actor:   "system",
		Role:    "system",
		Action:  "apitoken.bootstrap",
		Target:  t.ID,
		Outcome: auditlog.OutcomeSuccess,
		Detail:  detail,
	}
	if err := s.CreateAPIToken(ctx, t, &e); err != nil {
		os.Remove(path)
		return false, fmt.Errorf("bootstrap: store API token: %w", err)
	}
	return true, nil
}
