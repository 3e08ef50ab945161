package agentapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// usageBatch stores a usage batch exactly once and acknowledges it once
// stored: a batch re-sent after a lost ack is recognised by its sequence and
// acknowledged again without being counted twice. The tenant is the
// session's (from the agent's SVID); foreignTenant already refused a batch
// naming another. An invalid batch ends the session with InvalidArgument
// and is audited (the agent's spool validates the same rules, so only a
// broken or hostile agent sends one); a store failure ends it with
// Unavailable, and the agent sends the batch again after reconnecting.
func (s *Service) usageBatch(ctx context.Context, stream agentv1.AgentService_SessionServer, id spiffeid.ID, key store.AgentKey, m *agentv1.AgentMessage) error {
	b := m.GetUsageBatch()
	recs, err := usageRecords(b)
	if err == nil {
		var dup bool
		dup, err = s.cfg.Store.IngestUsage(ctx, key, b.GetSequence(), recs)
		if err == nil {
			if dup {
				s.cfg.Logger.Debug("usage batch already stored; acknowledging again", "tenant", key.Tenant, "agent", key.ID, "sequence", b.GetSequence())
			}
			return stream.Send(&agentv1.ControlMessage{Body: &agentv1.ControlMessage_Ack{Ack: &agentv1.Ack{Ref: m.GetId(), UsageSequence: b.GetSequence()}}})
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, errInvalidUsage) {
		s.cfg.Logger.Error("store usage batch", "tenant", key.Tenant, "agent", key.ID, "sequence", b.GetSequence(), "err", err)
		return status.Error(codes.Unavailable, "control plane store unavailable: usage batch not stored; send it again after reconnecting")
	}
	s.audit(ctx, id, key.Tenant, "usage.refuse", auditlog.OutcomeDenied, map[string]string{
		"sequence": strconv.FormatUint(b.GetSequence(), 10), "error": truncate(err.Error(), maxAuditMessage),
	})
	s.cfg.Logger.Warn("invalid usage batch refused", "tenant", key.Tenant, "agent", key.ID, "sequence", b.GetSequence(), "err", err)
	return status.Errorf(codes.InvalidArgument, "usage_batch: %v", err)
}

var errInvalidUsage = errors.New("invalid usage batch")

// usageRecords converts a batch's records for the store; the store checks
// meters and values, this checks what only the protocol has.
func usageRecords(b *agentv1.UsageBatch) ([]store.UsageRecord, error) {
	if b.GetSequence() == 0 {
		return nil, fmt.Errorf("%w: sequence must be above 0", errInvalidUsage)
	}
	if n := len(b.GetRecords()); n == 0 || n > store.MaxUsageBatch {
		return nil, fmt.Errorf("%w: %d records; a batch holds 1 to %d", errInvalidUsage, n, store.MaxUsageBatch)
	}
	out := make([]store.UsageRecord, len(b.GetRecords()))
	for i, r := range b.GetRecords() {
		if r.GetAt() == nil || !r.GetAt().IsValid() {
			return nil, fmt.Errorf("%w: records[%d].at: missing or invalid time", errInvalidUsage, i)
		}
		out[i] = store.UsageRecord{Meter: r.GetMeter(), Value: r.GetValue(), At: r.GetAt().AsTime()}
	}
	return out, nil
}

// maxHealthAge is how far back a heartbeat's sent_at is believed: agents
// send spooled health changes with the time they happened.
const maxHealthAge = 7 * 24 * time.Hour

// heartbeatTime is when a heartbeat's health was observed: its sent_at when
// that is plausible (not in the future, not older than maxHealthAge), else
// now.
func (s *Service) heartbeatTime(hb *agentv1.Heartbeat) time.Time {
	now := s.cfg.Now()
	if t := hb.GetSentAt(); t != nil && t.IsValid() {
		if at := t.AsTime(); !at.After(now) && now.Sub(at) <= maxHealthAge {
			return at
		}
	}
	return now
}

// healthStates converts heartbeat components for the store's health
// history. A drift detail is kept only with drift (it says what drifted);
// the store cuts long messages and details.
func healthStates(cs []*agentv1.ComponentHealth) []store.ComponentState {
	out := make([]store.ComponentState, 0, min(len(cs), store.MaxHealthComponents))
	for _, c := range cs[:min(len(cs), store.MaxHealthComponents)] {
		st := strings.ToLower(strings.TrimPrefix(c.GetStatus().String(), "HEALTH_STATUS_"))
		s := store.ComponentState{Name: truncate(c.GetName(), store.MaxHealthName), Status: st, Message: c.GetMessage()}
		if c.GetDrift() {
			s.Drift, s.DriftDetail = true, c.GetDriftDetail()
		}
		out = append(out, s)
	}
	return out
}

// recordHealth keeps the agent's health history: called with every
// heartbeat's components, it writes only when they differ from what this
// session last recorded (the store appends an event per change of status or
// drift).
func (s *Service) recordHealth(ctx context.Context, key store.AgentKey, last *[]byte, health []byte, cs []*agentv1.ComponentHealth, at time.Time) {
	if len(cs) == 0 || bytes.Equal(*last, health) {
		return
	}
	if err := s.cfg.Store.RecordHealth(ctx, key, at, healthStates(cs)); err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("record health history", "tenant", key.Tenant, "agent", key.ID, "err", err)
		}
		return
	}
	*last = health
}
