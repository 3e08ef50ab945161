package journal

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	"attache.dev/attache/internal/plan"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// Plan decodes the plan from the journaled envelope. The envelope was
// verified when the plan was accepted and the journal is the agent's own
// 0600 file, so the signature is not checked again (the key that signed it
// may have been rotated away since, and its sequence is no longer newer
// than the last accepted).
func (r *PlanRecord) Plan() (*planv1.Plan, error) {
	if len(r.Envelope) == 0 {
		return nil, fmt.Errorf("plan %s: no envelope journaled", r.ID)
	}
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
	}
	if err := json.Unmarshal(r.Envelope, &env); err != nil {
		return nil, fmt.Errorf("plan %s: journaled envelope: %w", r.ID, err)
	}
	if env.PayloadType != plan.PayloadType {
		return nil, fmt.Errorf("plan %s: journaled envelope carries %.100q, not a plan", r.ID, env.PayloadType)
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		payload, err = base64.URLEncoding.DecodeString(env.Payload)
	}
	if err != nil {
		return nil, fmt.Errorf("plan %s: journaled envelope: payload is not base64", r.ID)
	}
	p, err := plan.Unmarshal(payload)
	if err != nil {
		return nil, fmt.Errorf("plan %s: journaled envelope: %w", r.ID, err)
	}
	if p.GetPlanId() != r.ID {
		return nil, fmt.Errorf("plan %s: journaled envelope holds plan %.256q", r.ID, p.GetPlanId())
	}
	return p, nil
}

// Plan decodes the journaled plan with the given ID (see PlanRecord.Plan).
func (j *Journal) Plan(id string) (*planv1.Plan, error) {
	rec, err := j.Get(id)
	if err != nil {
		return nil, err
	}
	return rec.Plan()
}
