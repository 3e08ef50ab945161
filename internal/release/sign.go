package release

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
)

// Sign validates r, encodes it deterministically (Marshal) and returns a
// DSSE envelope (JSON) with payload type PayloadType signed by every signer
// (the vendor's release key). It refuses, with an error matching
// ErrTooLarge, a release whose envelope would exceed MaxEnvelopeBytes or
// whose plans would not fit a signed plan (Fits).
func Sign(ctx context.Context, r *Release, signers ...*sign.Signer) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("sign release: %w", err)
	}
	payload, err := Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("sign release %s: %w", Ref(r), err)
	}
	if n := base64.StdEncoding.EncodedLen(len(payload)); n > MaxEnvelopeBytes {
		return nil, fmt.Errorf("sign release %s: %w: the payload is %d bytes, %d in base64, and the signed envelope may be at most %d bytes (768 KiB); make the manifests or migrations smaller",
			Ref(r), ErrTooLarge, len(payload), n, MaxEnvelopeBytes)
	}
	env, err := sign.SignPayload(ctx, PayloadType, payload, signers...)
	if err != nil {
		return nil, fmt.Errorf("sign release %s: %w", Ref(r), err)
	}
	if len(env) > MaxEnvelopeBytes {
		return nil, fmt.Errorf("sign release %s: %w: the signed envelope is %d bytes, limit %d bytes (768 KiB)", Ref(r), ErrTooLarge, len(env), MaxEnvelopeBytes)
	}
	if err := Fits(r, env); err != nil {
		return nil, fmt.Errorf("sign release %s: %w", Ref(r), err)
	}
	return env, nil
}

// Verify checks a signed release envelope against root and returns the
// release. The checks run in this order, and the first failure is returned
// wrapping one of:
//
//  1. ErrTooLarge: the envelope exceeds MaxEnvelopeBytes;
//  2. ErrSignature: it does not decode as DSSE, its payload type is not
//     PayloadType, or it is not signed by the threshold of root's
//     `releases` keys (a release signed with the plans key is refused
//     here);
//  3. ErrMalformed: the payload does not decode strictly (Unmarshal);
//  4. ErrInvalid: the release does not pass Validate.
//
// Verify does not check root's expiry (the agent does, before using the
// root at all), nor Fits: a plan that arrived carrying the release fits.
// An error matching none of them means root is missing or malformed, or
// ctx is done.
func Verify(ctx context.Context, root *sign.Root, envelope []byte) (*Release, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if root == nil {
		return nil, errors.New("verify release: no trust root")
	}
	if err := root.Validate(); err != nil {
		return nil, fmt.Errorf("verify release: %w", err)
	}
	if len(envelope) > MaxEnvelopeBytes {
		return nil, fmt.Errorf("%w: envelope is %d bytes, limit %d", ErrTooLarge, len(envelope), MaxEnvelopeBytes)
	}
	payload, err := sign.VerifyPayload(ctx, root, sign.RoleReleases, PayloadType, envelope)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	r, err := Unmarshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%w: release %.300s: %v", ErrInvalid, Ref(r), err)
	}
	return r, nil
}

// Peek decodes the release inside a signed envelope WITHOUT verifying any
// signature or validating it. It is for display only (which release does
// this plan or file claim to carry?); never act on what it returns: use
// Verify.
func Peek(envelope []byte) (*Release, error) {
	if len(envelope) > MaxEnvelopeBytes {
		return nil, fmt.Errorf("%w: envelope is %d bytes, limit %d", ErrTooLarge, len(envelope), MaxEnvelopeBytes)
	}
	var e struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
	}
	if err := json.Unmarshal(envelope, &e); err != nil {
		return nil, fmt.Errorf("decode release envelope: %w", err)
	}
	if e.PayloadType != PayloadType {
		return nil, fmt.Errorf("decode release envelope: payload type is %.100q, want %q", e.PayloadType, PayloadType)
	}
	payload, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		if payload, err = base64.URLEncoding.DecodeString(e.Payload); err != nil {
			return nil, errors.New("decode release envelope: payload is not valid base64")
		}
	}
	return Unmarshal(payload)
}

// planEnvelopeOverhead bounds what a signed plan envelope holds besides the
// base64 of the plan: the JSON, the payload type and up to four
// signatures.
const planEnvelopeOverhead = 1024

// Fits reports, with an error matching ErrTooLarge, whether a plan rendered
// from r might not fit plan.MaxPlanBytes once signed. A plan carries
// envelope (r signed) as well as r's rendered steps and the tenant's
// release context, so Fits renders r for every tier it lists with the
// worst case the control plane could choose: the longest tenant name and
// agent ID, and every flag set to a value of MaxFlagValueBytes. Sign calls
// it; a control plane accepting a pushed release should too.
func Fits(r *Release, envelope []byte) error {
	if r == nil {
		return errors.New("release is nil")
	}
	flags := make(map[string]string, len(r.Flags))
	for k := range r.Flags {
		flags[k] = strings.Repeat("x", MaxFlagValueBytes)
	}
	at := timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 999999999, time.UTC))
	for _, tier := range r.probeTiers() {
		c := &planv1.ReleaseContext{Tenant: probeTenant, Tier: tier, Flags: flags}
		steps, err := Render(r, c)
		if err != nil {
			return fmt.Errorf("render for tier %s: %w", tier, err)
		}
		p := &planv1.Plan{
			PlanId:          "00000000-0000-7000-8000-000000000000",
			Tenant:          probeTenant,
			AgentSpiffeId:   "spiffe://" + strings.Repeat("d", 255) + "/tenant/" + probeTenant + "/agent/" + probeTenant,
			Sequence:        math.MaxUint64,
			IssuedAt:        at,
			ExpiresAt:       at,
			ReleaseRef:      Ref(r),
			Steps:           steps,
			DryRun:          true,
			ReleaseEnvelope: envelope,
			ReleaseContext:  c,
		}
		b, err := plan.Marshal(p)
		if err != nil {
			return err
		}
		if size := base64.StdEncoding.EncodedLen(len(b)) + planEnvelopeOverhead; size > plan.MaxPlanBytes {
			return fmt.Errorf("%w: a plan rendered from release %s for tier %s could be %d bytes once signed (it carries the %d-byte signed release and its rendered steps, with every flag at its %d-byte limit), but a signed plan may be at most %d bytes (1 MiB); make the manifests or migrations smaller, or pass them to fewer steps",
				ErrTooLarge, Ref(r), tier, size, len(envelope), MaxFlagValueBytes, plan.MaxPlanBytes)
		}
	}
	return nil
}
