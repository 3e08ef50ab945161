package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

const (
	// maxPlanBodyBytes bounds POST /v1/plans: the YAML travels as a JSON
	// string (escaping grows it) and may carry comments, while the signed
	// plan must fit plan.MaxPlanBytes.
	maxPlanBodyBytes = 2 * plan.MaxPlanBytes
	defaultPlanPage  = 100
	maxPlanPage      = 1000
	maxPlanIDLen     = 128
)

func (s *server) submitPlan(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.SubmitPlanRequest
	if err := decodeLimit(w, r, &req, maxPlanBodyBytes); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusRequestEntityTooLarge {
			return &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf(
				"request body larger than %d bytes (2 MiB), the limit for a plan submission; a signed plan may be at most %d bytes (1 MiB): split the plan or move bulky content into the release",
				maxPlanBodyBytes, plan.MaxPlanBytes)}
		}
		return err
	}
	if err := validTenantName(req.Tenant); err != nil {
		return errBadRequest("tenant: %v", err)
	}
	c.tenant = req.Tenant
	if req.Agent != "" {
		if !identity.ValidName(req.Agent) {
			return errBadRequest("agent: must be an agent ID: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")
		}
		c.target = req.Agent // until the plan has an ID
	}
	if strings.TrimSpace(req.YAML) == "" {
		return errBadRequest("yaml: must hold the plan's YAML document")
	}
	p, err := s.cfg.Plans.Submit(r.Context(), plans.SubmitRequest{
		Actor:     c.actor,
		Role:      c.role,
		Source:    c.source,
		RequestID: c.requestID,
		Tenant:    req.Tenant,
		AgentID:   req.Agent,
		YAML:      []byte(req.YAML),
		DryRun:    req.DryRun,
	})
	if err != nil {
		return planError(err)
	}
	c.target = p.ID
	writeJSON(w, http.StatusCreated, s.planOut(p, c.now, true))
	return nil
}

// planError maps the plans service's errors to statuses; their text already
// says what is wrong and what to do.
func planError(err error) error {
	status := 0
	msg := err.Error()
	switch {
	case errors.Is(err, plan.ErrTooLarge):
		status = http.StatusRequestEntityTooLarge
	case errors.Is(err, plans.ErrInvalid):
		status, msg = http.StatusBadRequest, "yaml: "+msg
	case errors.Is(err, plans.ErrAmbiguousAgent):
		status = http.StatusBadRequest
	case errors.Is(err, plans.ErrNoAgent), errors.Is(err, store.ErrRevoked):
		status = http.StatusConflict
	case errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
	default:
		return err
	}
	return &apiError{status: status, msg: msg, err: err}
}

func (s *server) listPlans(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	f := store.PlanFilter{Tenant: q.Get("tenant"), AgentID: q.Get("agent"), Limit: defaultPlanPage}
	if f.Tenant != "" {
		if err := validTenantName(f.Tenant); err != nil {
			return errBadRequest("tenant: %v", err)
		}
	}
	if f.AgentID != "" && !identity.ValidName(f.AgentID) {
		return errBadRequest("agent: must be an agent ID: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPlanPage {
			return errBadRequest("limit: must be between 1 and %d", maxPlanPage)
		}
		f.Limit = n
	}
	ps, err := s.cfg.Store.ListPlans(r.Context(), f)
	if err != nil {
		return err
	}
	out := apiv1.PlanList{Plans: make([]apiv1.Plan, 0, len(ps))}
	for _, p := range ps {
		out.Plans = append(out.Plans, s.planOut(p, c.now, false))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getPlan(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	if id == "" || len(id) > maxPlanIDLen {
		return errBadRequest("id: must be 1-%d characters", maxPlanIDLen)
	}
	p, err := s.cfg.Store.GetPlan(r.Context(), id)
	if err != nil {
		return storeError(err, "plan "+id)
	}
	writeJSON(w, http.StatusOK, s.planOut(p, c.now, true))
	return nil
}

// planOut renders a stored plan; with steps, its steps as signed merged with
// the agent's last report.
func (s *server) planOut(p store.Plan, now time.Time, withSteps bool) apiv1.Plan {
	state := string(p.State)
	if p.State == store.PlanPending && !now.Before(p.ExpiresAt) {
		state = apiv1.PlanExpired
	}
	out := apiv1.Plan{
		ID:         p.ID,
		Tenant:     p.Tenant,
		Agent:      p.AgentID,
		Sequence:   p.Sequence,
		Release:    p.Release,
		DryRun:     p.DryRun,
		State:      state,
		Message:    p.Message,
		CreatedBy:  p.CreatedBy,
		CreatedAt:  p.CreatedAt.UTC(),
		ExpiresAt:  p.ExpiresAt.UTC(),
		UpdatedAt:  p.UpdatedAt.UTC(),
		AckedAt:    utcPtr(p.AckedAt),
		FinishedAt: utcPtr(p.FinishedAt),
	}
	signed, err := plans.Decode(p.Envelope)
	if err != nil {
		// The row is still worth showing; the log says what is wrong.
		s.log.Error("stored plan does not decode", "plan", p.ID, "err", err)
		return out
	}
	out.StepCount = len(signed.GetSteps())
	if withSteps {
		out.Steps = mergeSteps(signed, p.Steps)
	}
	return out
}

// mergeSteps lists the signed plan's steps, in the plan's order, each with
// its reported status (stored as a JSON array of agentv1.StepStatus in
// protojson); steps not reported yet are pending.
func mergeSteps(signed *planv1.Plan, reportJSON []byte) []apiv1.PlanStep {
	reported := map[string]*agentv1.StepStatus{}
	var raws []json.RawMessage
	if len(reportJSON) > 0 && json.Unmarshal(reportJSON, &raws) == nil {
		for _, raw := range raws {
			var st agentv1.StepStatus
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &st); err == nil && st.GetStepId() != "" {
				reported[st.GetStepId()] = &st
			}
		}
	}
	out := make([]apiv1.PlanStep, 0, len(signed.GetSteps()))
	for _, step := range signed.GetSteps() {
		ps := apiv1.PlanStep{
			ID:        step.GetId(),
			Provider:  step.GetProvider(),
			Action:    step.GetAction(),
			Resource:  step.GetResource(),
			DependsOn: step.GetDependsOn(),
			State:     apiv1.StepPending,
		}
		if st := reported[step.GetId()]; st != nil {
			if st.GetState() != "" {
				ps.State = st.GetState()
			}
			ps.Message = st.GetMessage()
			ps.Attempts = st.GetAttempts()
			if st.GetStartedAt() != nil && st.GetStartedAt().IsValid() {
				t := st.GetStartedAt().AsTime().UTC()
				ps.StartedAt = &t
			}
			if st.GetFinishedAt() != nil && st.GetFinishedAt().IsValid() {
				t := st.GetFinishedAt().AsTime().UTC()
				ps.FinishedAt = &t
			}
			if ps.StartedAt != nil && ps.FinishedAt != nil && !ps.FinishedAt.Before(*ps.StartedAt) {
				ps.Duration = roundDuration(ps.FinishedAt.Sub(*ps.StartedAt)).String()
			}
			for _, ch := range st.GetChanges() {
				ps.Changes = append(ps.Changes, apiv1.StepChange{Resource: ch.GetResource(), Operation: ch.GetOperation(), Summary: ch.GetSummary()})
			}
			ps.CompensationState = st.GetCompensationState()
			ps.CompensationMessage = st.GetCompensationMessage()
			ps.Outputs = st.GetOutputs()
		}
		out = append(out, ps)
	}
	return out
}

// roundDuration rounds to milliseconds, or to microseconds for a step
// shorter than a millisecond (so it does not show as 0s).
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Microsecond)
}
