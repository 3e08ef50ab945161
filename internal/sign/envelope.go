package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

const (
	// MaxEnvelopeSize is the largest envelope, in bytes, that is signed or
	// verified.
	MaxEnvelopeSize = 1 << 20

	// maxSignatures bounds the work one envelope can cause.
	maxSignatures = 32
	maxKeyIDLen   = 256
)

// SignPayload wraps payload in a DSSE envelope signed by every signer and
// returns the envelope as JSON.
func SignPayload(ctx context.Context, payloadType string, payload []byte, signers ...*Signer) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if payloadType == "" {
		return nil, errors.New("sign: payload type is empty")
	}
	if len(signers) == 0 {
		return nil, errors.New("sign: no signers")
	}
	if len(signers) > maxSignatures {
		return nil, fmt.Errorf("sign: %d signers, limit %d", len(signers), maxSignatures)
	}
	seen := make(map[string]bool, len(signers))
	ds := make([]dsse.Signer, 0, len(signers))
	for _, s := range signers {
		if s == nil {
			return nil, errors.New("sign: nil signer")
		}
		if seen[s.id] {
			return nil, fmt.Errorf("sign: key %s given twice", s.id)
		}
		seen[s.id] = true
		ds = append(ds, dsseSigner{s})
	}
	es, err := dsse.NewEnvelopeSigner(ds...)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	env, err := es.SignPayload(ctx, payloadType, payload)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	out, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("sign: encode envelope: %w", err)
	}
	if len(out) > MaxEnvelopeSize {
		return nil, fmt.Errorf("sign: envelope is %d bytes, limit %d", len(out), MaxEnvelopeSize)
	}
	return out, nil
}

// VerifyPayload checks that envelope carries payloadType and is signed by at
// least the threshold of role's keys in r, and returns the payload. It does
// not check r's expiry; verify r with VerifyRoot or VerifyRootUpdate first.
func VerifyPayload(ctx context.Context, r *Root, role, payloadType string, envelope []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, errors.New("verify: no trust root")
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if _, ok := r.Roles[role]; !ok {
		return nil, fmt.Errorf("verify: trust root has no %q role", role)
	}
	env, payload, err := decodeEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if env.PayloadType != payloadType {
		return nil, fmt.Errorf("envelope payload type is %.100q, want %q", env.PayloadType, payloadType)
	}
	if err := verifyRole(ctx, env, payload, r, role, ""); err != nil {
		return nil, err
	}
	return payload, nil
}

// RootHash returns the sha256 of the envelope bytes, the pin carried in a join
// token.
func RootHash(envelope []byte) [32]byte { return sha256.Sum256(envelope) }

// decodeEnvelope strictly decodes a DSSE envelope and its payload.
func decodeEnvelope(data []byte) (*dsse.Envelope, []byte, error) {
	if len(data) > MaxEnvelopeSize {
		return nil, nil, fmt.Errorf("envelope is %d bytes, limit %d", len(data), MaxEnvelopeSize)
	}
	env, err := parseEnvelope(data)
	if err != nil {
		return nil, nil, fmt.Errorf("decode envelope: %w", err)
	}
	var errs []error
	if env.PayloadType == "" {
		errs = append(errs, errors.New("payloadType is empty"))
	}
	payload, err := decodeB64(env.Payload)
	if err != nil {
		errs = append(errs, errors.New("payload is not valid base64"))
	}
	sigs := env.Signatures
	switch n := len(sigs); {
	case n == 0:
		errs = append(errs, errors.New("envelope has no signatures"))
	case n > maxSignatures:
		errs = append(errs, fmt.Errorf("envelope has %d signatures, limit %d", n, maxSignatures))
		// Refused anyway: do not build (and have callers log) one error
		// per signature, which a 1 MiB envelope can make hundreds of
		// thousands of.
		sigs = nil
	}
	for i, s := range sigs {
		if len(s.KeyID) > maxKeyIDLen {
			errs = append(errs, fmt.Errorf("signature %d: keyid is longer than %d bytes", i, maxKeyIDLen))
		}
		if _, err := decodeB64(s.Sig); err != nil {
			errs = append(errs, fmt.Errorf("signature %d is not valid base64", i))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, fmt.Errorf("decode envelope: %w", err)
	}
	return &env, payload, nil
}

// decodeB64 accepts the two encodings DSSE allows, strictly.
func decodeB64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		b, err = base64.URLEncoding.Strict().DecodeString(s)
	}
	return b, err
}

// verifyRole checks that env, whose decoded payload is payload, carries
// signatures from at least the threshold of role's distinct keys in r.
// Signatures by other keys are ignored. what prefixes the error
// ("previous root", …) and may be empty.
func verifyRole(ctx context.Context, env *dsse.Envelope, payload []byte, r *Root, role, what string) error {
	rk := r.Roles[role]
	vs := make([]dsse.Verifier, 0, len(rk.KeyIDs))
	for _, id := range rk.KeyIDs {
		vs = append(vs, verifier{id: id, pub: ed25519.PublicKey(r.Keys[id].Public)})
	}
	ev, err := dsse.NewMultiEnvelopeVerifier(rk.Threshold, vs...)
	if err != nil {
		return fmt.Errorf("%s role: %w", role, err)
	}
	accepted, body, verr := ev.VerifyAndDecode(ctx, env)
	distinct := make(map[string]bool, len(accepted))
	for _, a := range accepted {
		distinct[a.KeyID] = true
	}
	if len(distinct) < rk.Threshold {
		noun := "signatures"
		if rk.Threshold == 1 {
			noun = "signature"
		}
		if what != "" {
			what += " "
		}
		return fmt.Errorf("%s%s role needs %d %s from its keys, got %d", what, role, rk.Threshold, noun, len(distinct))
	}
	if verr != nil {
		return fmt.Errorf("%s role: %w", role, verr)
	}
	if !bytes.Equal(body, payload) {
		return errors.New("envelope payload decodes ambiguously")
	}
	return nil
}
