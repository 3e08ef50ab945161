package plan

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/sign"
)

// PayloadType is the DSSE payload type of a signed plan.
const PayloadType = "application/vnd.attache.plan+protobuf"

// MaxPlanBytes is the largest signed plan envelope, in bytes, that Sign
// produces and the agent accepts: 1 MiB.
//
// The envelope travels in one gRPC message (agentv1.PlanOffer) whose limit is
// 4 MiB (internal/grpcx.MaxRecvMsgSize). 1 MiB leaves room for the rest of the
// offer, for the audit-log inclusion proof that goes with it and for a release
// manifest carried next to the plan later, and keeps the agent's verification
// cost (base64, signature over the whole payload, protobuf decode) bounded.
// It equals sign.MaxEnvelopeSize, which the DSSE layer enforces on its own.
// A plan that does not fit is refused by Sign, that is at submit time on the
// control plane, never first on the agent: split it into several plans, or
// move bulky content (manifests, migrations) into the release and refer to
// it.
const MaxPlanBytes = 1 << 20

// Bounds on a plan's contents.
const (
	// MaxSteps is the most steps one plan may hold.
	MaxSteps = 1000
	// MaxLifetime is the longest a plan may stay valid (expires_at minus
	// issued_at).
	MaxLifetime = 7 * 24 * time.Hour
	// DefaultLifetime is the lifetime of a plan whose YAML has no expires_in.
	DefaultLifetime = 24 * time.Hour
	// MaxParamsDepth is how deeply params (and compensation params) may nest.
	MaxParamsDepth = 32
)

// ErrTooLarge is matched (errors.Is) by the error for a plan whose signed
// envelope would exceed, or exceeds, MaxPlanBytes.
var ErrTooLarge = errors.New("plan too large")

// Marshal returns the deterministic protobuf encoding of p, the bytes that
// are signed. It does not validate p.
func Marshal(p *planv1.Plan) ([]byte, error) {
	if p == nil {
		return nil, errors.New("plan is nil")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	return b, nil
}

// Unmarshal decodes a plan's protobuf encoding strictly: besides what
// proto.Unmarshal checks (well-formed wire data, UTF-8 strings), it refuses
// fields this build does not know, anywhere in the plan, naming the first
// one. An agent must not apply a plan part of which it would silently ignore.
// It does not validate the plan; call Validate.
func Unmarshal(b []byte) (*planv1.Plan, error) {
	var p planv1.Plan
	if err := proto.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	if path, ok := findUnknown(&p); ok {
		return nil, fmt.Errorf("decode plan: %s has fields this agent does not know (is the agent older than the control plane?)", path)
	}
	return &p, nil
}

// findUnknown returns the path of the first message in p holding unknown
// fields. It walks the plan's types directly (protoreflect's generic Range
// costs more than the rest of the decode), and builds the path only for the
// message it finds.
func findUnknown(p *planv1.Plan) (string, bool) {
	if unknown(p) || unknown(p.GetIssuedAt()) || unknown(p.GetExpiresAt()) {
		return "plan", true
	}
	if unknown(p.GetReleaseContext()) {
		return "plan.release_context", true
	}
	for i, s := range p.GetSteps() {
		at := func(field string) string { return fmt.Sprintf("plan.steps[%d]%s", i, field) }
		if unknown(s) {
			return at(""), true
		}
		if path, ok := structUnknown(s.GetParams()); ok {
			return at(".params" + path), true
		}
		if c := s.GetCompensation(); c != nil {
			if unknown(c) {
				return at(".compensation"), true
			}
			if path, ok := structUnknown(c.GetParams()); ok {
				return at(".compensation.params" + path), true
			}
		}
	}
	return "", false
}

func unknown(m proto.Message) bool {
	return m != nil && m.ProtoReflect().IsValid() && len(m.ProtoReflect().GetUnknown()) > 0
}

// structUnknown and valueUnknown return the path, relative to s or v, of
// the first message below it holding unknown fields.
func structUnknown(s *structpb.Struct) (string, bool) {
	if s == nil {
		return "", false
	}
	if unknown(s) {
		return "", true
	}
	for k, v := range s.GetFields() {
		if p, ok := valueUnknown(v); ok {
			return keyPath(k) + p, true
		}
	}
	return "", false
}

func valueUnknown(v *structpb.Value) (string, bool) {
	if v == nil {
		return "", false
	}
	if unknown(v) {
		return "", true
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_StructValue:
		return structUnknown(k.StructValue)
	case *structpb.Value_ListValue:
		if unknown(k.ListValue) {
			return "", true
		}
		for i, e := range k.ListValue.GetValues() {
			if p, ok := valueUnknown(e); ok {
				return fmt.Sprintf("[%d]", i) + p, true
			}
		}
	}
	return "", false
}

// Sign validates p, encodes it deterministically and returns a DSSE envelope
// (JSON) with payload type PayloadType signed by every signer (the control
// plane's `plans` key). It refuses, with an error matching ErrTooLarge that
// gives the size and the limit, a plan whose envelope would exceed
// MaxPlanBytes; that check runs before any signing.
func Sign(ctx context.Context, p *planv1.Plan, signers ...*sign.Signer) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := Validate(p); err != nil {
		return nil, fmt.Errorf("sign plan: %w", err)
	}
	payload, err := Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("sign plan: %w", err)
	}
	size, err := envelopeSize(len(payload), signers)
	if err != nil {
		return nil, fmt.Errorf("sign plan: %w", err)
	}
	if size > MaxPlanBytes {
		return nil, fmt.Errorf("sign plan %s: %w: the signed envelope would be %d bytes (plan encoding %d bytes, %d steps), limit %d bytes (%s); split the plan or move bulky content into the release",
			p.GetPlanId(), ErrTooLarge, size, len(payload), len(p.GetSteps()), MaxPlanBytes, "1 MiB")
	}
	env, err := sign.SignPayload(ctx, PayloadType, payload, signers...)
	if err != nil {
		return nil, fmt.Errorf("sign plan %s: %w", p.GetPlanId(), err)
	}
	if len(env) > MaxPlanBytes { // envelopeSize is exact; this is a backstop.
		return nil, fmt.Errorf("sign plan %s: %w: the signed envelope is %d bytes, limit %d bytes", p.GetPlanId(), ErrTooLarge, len(env), MaxPlanBytes)
	}
	return env, nil
}

// envelopeSize returns the exact length of the JSON DSSE envelope that
// sign.SignPayload builds for a payload of n bytes and these signers:
// ed25519 signatures are always ed25519.SignatureSize bytes, and base64 and
// key ids need no JSON escaping.
func envelopeSize(n int, signers []*sign.Signer) (int, error) {
	env := dsse.Envelope{PayloadType: PayloadType}
	zeroSig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	for _, s := range signers {
		if s == nil {
			return 0, errors.New("nil signer")
		}
		env.Signatures = append(env.Signatures, dsse.Signature{KeyID: s.KeyID(), Sig: zeroSig})
	}
	b, err := json.Marshal(env)
	if err != nil {
		return 0, err
	}
	return len(b) + base64.StdEncoding.EncodedLen(n), nil
}

// NewID returns a fresh plan id: a UUID version 7 (RFC 9562), which sorts by
// its time now.
func NewID(now time.Time) string {
	var u [16]byte
	if _, err := rand.Read(u[6:]); err != nil {
		panic(err) // crypto/rand.Read never fails on supported platforms.
	}
	ms := uint64(now.UnixMilli())
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], ms)
	copy(u[:6], ts[2:])
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
