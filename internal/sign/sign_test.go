package sign

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

var testNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

const planType = "application/vnd.attache.plan+json"

func signers(t testing.TB, n int) []*Signer {
	t.Helper()
	out := make([]*Signer, n)
	for i := range out {
		s, err := GenerateSigner()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = s
	}
	return out
}

func ids(ss []*Signer) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.KeyID())
	}
	return out
}

// keyset holds the signers of one root.
type keyset struct {
	root, plans, releases []*Signer
}

func newKeyset(t testing.TB, nRoot, nPlans, nReleases int) keyset {
	return keyset{signers(t, nRoot), signers(t, nPlans), signers(t, nReleases)}
}

func (k keyset) build(version, rootThreshold, plansThreshold int) *Root {
	r := &Root{
		Type:        RootType,
		Version:     version,
		TrustDomain: "example.org",
		Expires:     testNow.Add(365 * 24 * time.Hour),
		Keys:        map[string]Key{},
		Roles: map[string]RoleKeys{
			RoleRoot:     {KeyIDs: ids(k.root), Threshold: rootThreshold},
			RolePlans:    {KeyIDs: ids(k.plans), Threshold: plansThreshold},
			RoleReleases: {KeyIDs: ids(k.releases), Threshold: 1},
		},
	}
	for _, group := range [][]*Signer{k.root, k.plans, k.releases} {
		for _, s := range group {
			r.Keys[s.KeyID()] = s.PublicKey()
		}
	}
	return r
}

func mustSignRoot(t testing.TB, r *Root, ss ...*Signer) []byte {
	t.Helper()
	env, err := SignRoot(context.Background(), r, ss...)
	if err != nil {
		t.Fatalf("SignRoot: %v", err)
	}
	return env
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want one containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

func TestSigner(t *testing.T) {
	s := signers(t, 1)[0]
	k := s.PublicKey()
	sum := sha256.Sum256(k.Public)
	if s.KeyID() != hex.EncodeToString(sum[:]) || KeyID(k) != s.KeyID() {
		t.Fatalf("KeyID = %s, want hex sha256 of the public key", s.KeyID())
	}
	if k.Type != "ed25519" || len(k.Public) != 32 {
		t.Fatalf("PublicKey = %+v", k)
	}
	pemBytes, err := s.MarshalPKCS8PEM()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParsePKCS8PEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if back.KeyID() != s.KeyID() {
		t.Fatal("PEM round trip changed the key")
	}

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"empty":         {nil, "no PEM block"},
		"trailing data": {append(bytes.Clone(pemBytes), "junk"...), "data after"},
		"wrong type":    {bytes.Replace(pemBytes, []byte("PRIVATE KEY"), []byte("EC PRIVATE KEY"), 2), "want \"PRIVATE KEY\""},
		"not ed25519":   {ecPEM, "want ed25519"},
		"bad der":       {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2}}), "parse PKCS#8"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParsePKCS8PEM(tc.in)
			wantErr(t, err, tc.want)
		})
	}
}

func TestRootValidate(t *testing.T) {
	ks := newKeyset(t, 2, 1, 1)
	tests := []struct {
		name   string
		mutate func(r *Root)
		want   string
	}{
		{"valid", func(r *Root) {}, ""},
		{"extra role allowed", func(r *Root) { r.Roles["audit"] = r.Roles[RolePlans] }, ""},
		{"type", func(r *Root) { r.Type = "tuf/root" }, "_type"},
		{"version zero", func(r *Root) { r.Version = 0 }, "version is 0"},
		{"trust domain", func(r *Root) { r.TrustDomain = "Bad Domain" }, "trust_domain"},
		{"trust domain as id", func(r *Root) { r.TrustDomain = "spiffe://example.org" }, "bare trust domain"},
		{"expiry", func(r *Root) { r.Expires = time.Time{} }, "expires is not set"},
		{"missing plans role", func(r *Root) { delete(r.Roles, RolePlans) }, "no plans role"},
		{"missing root role", func(r *Root) { delete(r.Roles, RoleRoot) }, "no root role"},
		{"missing releases role", func(r *Root) { delete(r.Roles, RoleReleases) }, "no releases role"},
		{"threshold zero", func(r *Root) { r.Roles[RoleRoot] = RoleKeys{KeyIDs: ids(ks.root), Threshold: 0} }, "root role threshold is 0, want 1 to 2"},
		{"threshold too high", func(r *Root) { r.Roles[RoleRoot] = RoleKeys{KeyIDs: ids(ks.root), Threshold: 3} }, "root role threshold is 3"},
		{"no keys", func(r *Root) { r.Roles[RolePlans] = RoleKeys{Threshold: 1} }, "plans role has no keys"},
		{"duplicate key id", func(r *Root) {
			id := ks.root[0].KeyID()
			r.Roles[RoleRoot] = RoleKeys{KeyIDs: []string{id, id}, Threshold: 2}
		}, "lists key " + ks.root[0].KeyID() + " twice"},
		{"unknown key id", func(r *Root) { r.Roles[RolePlans] = RoleKeys{KeyIDs: []string{"abc"}, Threshold: 1} }, "unknown key abc"},
		{"key id mismatch", func(r *Root) {
			id := ks.plans[0].KeyID()
			r.Keys[id] = ks.releases[0].PublicKey()
		}, "id does not match its key"},
		{"key type", func(r *Root) {
			id := ks.plans[0].KeyID()
			k := r.Keys[id]
			k.Type = "rsa"
			r.Keys[id] = k
		}, `type is "rsa"`},
		{"too many keys in role", func(r *Root) {
			var many []string
			for _, s := range signers(t, MaxRoleKeyIDs+1) {
				r.Keys[s.KeyID()] = s.PublicKey()
				many = append(many, s.KeyID())
			}
			r.Roles[RoleReleases] = RoleKeys{KeyIDs: many, Threshold: 1}
		}, "releases role has 33 keys, limit 32"},
		{"too many keys", func(r *Root) {
			for _, s := range signers(t, MaxRootKeys) {
				r.Keys[s.KeyID()] = s.PublicKey()
			}
		}, "limit 64"},
		{"key length", func(r *Root) {
			k := Key{Type: KeyTypeEd25519, Public: []byte{1, 2, 3}}
			r.Keys[KeyID(k)] = k
		}, "public key is 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ks.build(1, 1, 1)
			tt.mutate(r)
			wantErr(t, r.Validate(), tt.want)
		})
	}
	t.Run("all problems at once", func(t *testing.T) {
		r := ks.build(1, 1, 1)
		r.Type, r.Version = "", 0
		err := r.Validate()
		wantErr(t, err, "_type")
		wantErr(t, err, "version")
	})
	if err := (*Root)(nil).Validate(); err == nil {
		t.Error("nil root valid")
	}
}

func TestSignRootDeterministic(t *testing.T) {
	ks := newKeyset(t, 1, 1, 1)
	r := ks.build(1, 1, 1)
	a, _ := marshalRoot(r)
	r2 := ks.build(1, 1, 1)
	r2.Expires = r2.Expires.In(time.FixedZone("x", 3600))
	b, _ := marshalRoot(r2)
	if !bytes.Equal(a, b) {
		t.Fatalf("root encoding differs:\n%s\n%s", a, b)
	}
	// ed25519 signatures are deterministic too, so the envelope is.
	if !bytes.Equal(mustSignRoot(t, r, ks.root...), mustSignRoot(t, r2, ks.root...)) {
		t.Fatal("envelope differs")
	}
	if _, err := SignRoot(context.Background(), &Root{}, ks.root...); err == nil {
		t.Fatal("SignRoot signed an invalid root")
	}
}

// editEnvelope decodes env, applies f and re-encodes it.
func editEnvelope(t testing.TB, env []byte, f func(e *dsse.Envelope)) []byte {
	t.Helper()
	var e dsse.Envelope
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	f(&e)
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerifyRoot(t *testing.T) {
	ctx := context.Background()
	ks := newKeyset(t, 3, 1, 1)
	r := ks.build(1, 2, 1)
	good := mustSignRoot(t, r, ks.root[0], ks.root[1])
	stranger := signers(t, 1)[0]

	tests := []struct {
		name string
		env  []byte
		now  time.Time
		want string
	}{
		{"good", good, testNow, ""},
		{"all root keys", mustSignRoot(t, r, ks.root...), testNow, ""},
		{"unknown extra signer ignored", mustSignRoot(t, r, ks.root[0], stranger, ks.root[2]), testNow, ""},
		{"below threshold", mustSignRoot(t, r, ks.root[0]), testNow, "trust root: root role needs 2 signatures from its keys, got 1"},
		{"below threshold with stranger", mustSignRoot(t, r, ks.root[0], stranger), testNow, "needs 2 signatures from its keys, got 1"},
		{"plans key does not count", mustSignRoot(t, r, ks.root[0], ks.plans[0]), testNow, "got 1"},
		{"same key twice counts once", editEnvelope(t, mustSignRoot(t, r, ks.root[0]), func(e *dsse.Envelope) {
			e.Signatures = append(e.Signatures, e.Signatures[0])
		}), testNow, "got 1"},
		{"same key without keyid counts once", editEnvelope(t, mustSignRoot(t, r, ks.root[0]), func(e *dsse.Envelope) {
			e.Signatures = append(e.Signatures, dsse.Signature{Sig: e.Signatures[0].Sig})
		}), testNow, "got 1"},
		{"mislabelled keyid", editEnvelope(t, good, func(e *dsse.Envelope) {
			e.Signatures[0].KeyID, e.Signatures[1].KeyID = e.Signatures[1].KeyID, e.Signatures[0].KeyID
		}), testNow, "got 0"},
		{"expired", good, r.Expires, "trust root expired at " + r.Expires.Format(time.RFC3339)},
		{"tampered payload", editEnvelope(t, good, func(e *dsse.Envelope) {
			p, _ := base64.StdEncoding.DecodeString(e.Payload)
			p = bytes.Replace(p, []byte(`"version":1`), []byte(`"version":7`), 1)
			e.Payload = base64.StdEncoding.EncodeToString(p)
		}), testNow, "got 0"},
		{"wrong payload type", editEnvelope(t, good, func(e *dsse.Envelope) { e.PayloadType = planType }), testNow, "payload type"},
		{"no signatures", editEnvelope(t, good, func(e *dsse.Envelope) { e.Signatures = nil }), testNow, "no signatures"},
		{"bad base64 payload", editEnvelope(t, good, func(e *dsse.Envelope) { e.Payload = "!!" }), testNow, "payload is not valid base64"},
		{"bad base64 sig", editEnvelope(t, good, func(e *dsse.Envelope) { e.Signatures[0].Sig = "!!" }), testNow, "signature 0 is not valid base64"},
		{"too many signatures", editEnvelope(t, good, func(e *dsse.Envelope) {
			for range maxSignatures {
				e.Signatures = append(e.Signatures, e.Signatures[0])
			}
		}), testNow, "limit 32"},
		{"unknown field", []byte(strings.Replace(string(good), `{"payloadType"`, `{"extra":1,"payloadType"`, 1)), testNow, `unknown field "extra"`},
		{"case-folded field", []byte(strings.Replace(string(good), `"payloadType"`, `"PayloadType"`, 1)), testNow, "unknown field"},
		{"duplicate field", []byte(strings.Replace(string(good), `{"payloadType"`, `{"payload":"","payloadType"`, 1)), testNow, `duplicate key "payload"`},
		{"unknown signature field", []byte(strings.Replace(string(good), `"keyid"`, `"kid":1,"keyid"`, 1)), testNow, `unknown field "kid"`},
		{"trailing data", append(bytes.Clone(good), "{}"...), testNow, "data after"},
		{"not json", []byte("nope"), testNow, "decode envelope"},
		{"too big", append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEnvelopeSize)...), testNow, "limit 1048576"},
		{"unsigned payload junk", signedPayload(t, RootPayloadType, []byte(`{"_type":"attache/root","extra":1}`), ks.root...), testNow, "decode trust root"},
		{"invalid root", signedPayload(t, RootPayloadType, []byte(`{"_type":"attache/root"}`), ks.root...), testNow, "no root role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyRoot(ctx, tt.env, tt.now)
			wantErr(t, err, tt.want)
			if err == nil && (got.Version != 1 || got.TrustDomain != "example.org" || !got.Expires.Equal(r.Expires)) {
				t.Fatalf("VerifyRoot returned %+v", got)
			}
		})
	}
	if _, err := VerifyRoot(ctx, good, r.Expires); !errors.Is(err, ErrRootExpired) {
		t.Errorf("expired error %v does not match ErrRootExpired", err)
	}
}

func TestVerifyPinnedRoot(t *testing.T) {
	ctx := context.Background()
	ks := newKeyset(t, 2, 1, 1)
	r := ks.build(1, 2, 1)
	r.Expires = testNow.Add(-time.Hour) // long expired
	good := mustSignRoot(t, r, ks.root...)
	got, err := VerifyPinnedRoot(ctx, good)
	if err != nil {
		t.Fatalf("expired pinned root does not load: %v", err)
	}
	if got.Version != 1 || !got.Expires.Equal(r.Expires) {
		t.Fatalf("VerifyPinnedRoot returned %+v", got)
	}
	if _, err := VerifyRoot(ctx, good, testNow); !errors.Is(err, ErrRootExpired) {
		t.Fatalf("VerifyRoot of the expired root = %v, want ErrRootExpired", err)
	}
	// Everything but the expiry is still checked.
	_, err = VerifyPinnedRoot(ctx, mustSignRoot(t, r, ks.root[0]))
	wantErr(t, err, "trust root: root role needs 2 signatures from its keys, got 1")
	_, err = VerifyPinnedRoot(ctx, editEnvelope(t, good, func(e *dsse.Envelope) {
		p, _ := base64.StdEncoding.DecodeString(e.Payload)
		p = bytes.Replace(p, []byte(`"version":1`), []byte(`"version":7`), 1)
		e.Payload = base64.StdEncoding.EncodeToString(p)
	}))
	wantErr(t, err, "got 0")
	_, err = VerifyPinnedRoot(ctx, signedPayload(t, RootPayloadType, []byte(`{"_type":"attache/root"}`), ks.root...))
	wantErr(t, err, "no root role")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := VerifyPinnedRoot(cancelled, good); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func signedPayload(t testing.TB, typ string, payload []byte, ss ...*Signer) []byte {
	t.Helper()
	env, err := SignPayload(context.Background(), typ, payload, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestVerifyRootUpdate(t *testing.T) {
	ctx := context.Background()
	old := newKeyset(t, 2, 1, 1)
	prev := old.build(1, 2, 1)
	nw := newKeyset(t, 2, 1, 1)
	next := nw.build(2, 2, 1)
	both := append(append([]*Signer{}, old.root...), nw.root...)

	otherTD := nw.build(2, 2, 1)
	otherTD.TrustDomain = "evil.example"
	expiredNext := nw.build(2, 2, 1)
	expiredNext.Expires = testNow.Add(-time.Hour)
	expiredPrev := old.build(1, 2, 1)
	expiredPrev.Expires = testNow.Add(-time.Hour)

	tests := []struct {
		name string
		prev *Root
		env  []byte
		want string
	}{
		{"good", prev, mustSignRoot(t, next, both...), ""},
		{"from an expired root", expiredPrev, mustSignRoot(t, next, both...), ""},
		{"same keys renewed", prev, mustSignRoot(t, old.build(2, 2, 1), old.root...), ""},
		{"signed only by old keys", prev, mustSignRoot(t, next, old.root...), "root update: new root role needs 2 signatures from its keys, got 0"},
		{"signed only by new keys", prev, mustSignRoot(t, next, nw.root...), "root update: previous root role needs 2 signatures from its keys, got 0"},
		{"old threshold not met", prev, mustSignRoot(t, next, old.root[0], nw.root[0], nw.root[1]), "previous root role needs 2 signatures from its keys, got 1"},
		{"version skip", prev, mustSignRoot(t, nw.build(3, 2, 1), both...), "version 3 does not follow version 1"},
		{"same version", prev, mustSignRoot(t, nw.build(1, 2, 1), both...), "version 1 does not follow version 1"},
		{"trust domain change", prev, mustSignRoot(t, otherTD, both...), `trust domain changed from "example.org" to "evil.example"`},
		{"expired next", prev, mustSignRoot(t, expiredNext, both...), "trust root expired at"},
		{"no previous root", nil, mustSignRoot(t, next, both...), "no previous root"},
		{"garbage", prev, []byte("{"), "decode envelope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyRootUpdate(ctx, tt.prev, tt.env, testNow)
			wantErr(t, err, tt.want)
			if err == nil && got.Version != tt.prev.Version+1 {
				t.Fatalf("version %d", got.Version)
			}
		})
	}
}

func TestVerifyRootChain(t *testing.T) {
	ctx := context.Background()
	// Three generations of root keys; each rotation is signed by the old
	// and the new root keys.
	k1, k2, k3, k4 := newKeyset(t, 1, 1, 1), newKeyset(t, 1, 1, 1), newKeyset(t, 1, 1, 1), newKeyset(t, 1, 1, 1)
	v1 := k1.build(1, 1, 1)
	expiresAt := func(r *Root, at time.Time) *Root { r.Expires = at; return r }
	rotate := func(r *Root, from, to keyset) []byte {
		return mustSignRoot(t, r, append(append([]*Signer{}, from.root...), to.root...)...)
	}
	longAgo := testNow.Add(-400 * 24 * time.Hour)
	expiredV1 := expiresAt(k1.build(1, 1, 1), longAgo)
	v2 := rotate(k2.build(2, 1, 1), k1, k2)
	expiredV2 := rotate(expiresAt(k2.build(2, 1, 1), testNow.Add(-24*time.Hour)), k1, k2)
	v3 := rotate(k3.build(3, 1, 1), k2, k3)
	expiredV3 := rotate(expiresAt(k3.build(3, 1, 1), testNow.Add(-time.Second)), k2, k3)
	v4 := rotate(k4.build(4, 1, 1), k3, k4)
	v3OldKeysOnly := mustSignRoot(t, k3.build(3, 1, 1), k2.root...)

	tests := []struct {
		name    string
		trusted *Root
		chain   [][]byte
		want    string // error substring; "" for success
		version int    // final version on success
	}{
		{"one rotation", v1, [][]byte{v2}, "", 2},
		{"two rotations", v1, [][]byte{v2, v3}, "", 3},
		{"across an expired intermediate", v1, [][]byte{expiredV2, v3}, "", 3},
		{"from an expired root across expired intermediates", expiredV1, [][]byte{expiredV2, expiredV3, v4}, "", 4},
		{"final root expired", v1, [][]byte{v2, expiredV3}, "root chain: final root version 3: trust root expired at", 0},
		{"only root expired", v1, [][]byte{expiredV2}, "root update: trust root expired at", 0},
		{"intermediate not signed by its own keys", v1, [][]byte{v2, v3OldKeysOnly, v4}, "root 2 of 3, after version 2: root update: new root role needs 1 signature", 0},
		{"gap in the chain", v1, [][]byte{v2, v4}, "root 2 of 2, after version 2: root update: version 4 does not follow version 2", 0},
		{"out of order", v1, [][]byte{v3, v2}, "root 1 of 2, after version 1: root update: version 3 does not follow version 1", 0},
		{"garbage link", v1, [][]byte{v2, []byte("{")}, "root 2 of 2, after version 2: root update: decode envelope", 0},
		{"no trusted root", nil, [][]byte{v2}, "no previous root", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyRootChain(ctx, tt.trusted, tt.chain, testNow)
			wantErr(t, err, tt.want)
			if err != nil {
				if got != nil {
					t.Fatalf("refused chain returned roots %v", got)
				}
				return
			}
			if len(got) != len(tt.chain) {
				t.Fatalf("%d roots for a chain of %d", len(got), len(tt.chain))
			}
			for i, r := range got {
				if r.Version != tt.trusted.Version+1+i {
					t.Fatalf("root %d has version %d", i, r.Version)
				}
			}
			if final := got[len(got)-1]; final.Version != tt.version {
				t.Fatalf("final version %d, want %d", final.Version, tt.version)
			}
		})
	}
	t.Run("expired final root matches ErrRootExpired", func(t *testing.T) {
		if _, err := VerifyRootChain(ctx, v1, [][]byte{expiredV2, expiredV3}, testNow); !errors.Is(err, ErrRootExpired) {
			t.Fatalf("got %v, want ErrRootExpired", err)
		}
	})
	t.Run("a chain of one is VerifyRootUpdate", func(t *testing.T) {
		for _, env := range [][]byte{v2, expiredV2, v3} {
			_, errUpdate := VerifyRootUpdate(ctx, v1, env, testNow)
			_, errChain := VerifyRootChain(ctx, v1, [][]byte{env}, testNow)
			if fmt.Sprint(errUpdate) != fmt.Sprint(errChain) {
				t.Fatalf("VerifyRootUpdate %v, VerifyRootChain %v", errUpdate, errChain)
			}
		}
	})
	t.Run("empty chain", func(t *testing.T) {
		if got, err := VerifyRootChain(ctx, v1, nil, testNow); got != nil || err != nil {
			t.Fatalf("got %v, %v", got, err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := VerifyRootChain(cancelled, v1, [][]byte{v2, v3}, testNow); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestSignVerifyPayload(t *testing.T) {
	ctx := context.Background()
	ks := newKeyset(t, 1, 3, 1)
	r := ks.build(1, 1, 2)
	payload := []byte(`{"plan":1}`)
	stranger := signers(t, 1)[0]

	tests := []struct {
		name string
		role string
		typ  string
		env  []byte
		want string
	}{
		{"good", RolePlans, planType, signedPayload(t, planType, payload, ks.plans[0], ks.plans[2]), ""},
		{"stranger ignored", RolePlans, planType, signedPayload(t, planType, payload, stranger, ks.plans[0], ks.plans[1]), ""},
		{"below threshold", RolePlans, planType, signedPayload(t, planType, payload, ks.plans[0]), "plans role needs 2 signatures from its keys, got 1"},
		{"duplicate counts once", RolePlans, planType, editEnvelope(t, signedPayload(t, planType, payload, ks.plans[0]), func(e *dsse.Envelope) {
			e.Signatures = append(e.Signatures, e.Signatures[0])
		}), "got 1"},
		{"other role's key", RoleReleases, planType, signedPayload(t, planType, payload, ks.plans[0], ks.plans[1]), "releases role needs 1 signature from its keys, got 0"},
		{"root key is not a plans key", RolePlans, planType, signedPayload(t, planType, payload, ks.root[0], ks.plans[1]), "got 1"},
		{"wrong payload type", RolePlans, "application/vnd.attache.release+json", signedPayload(t, planType, payload, ks.plans...), `payload type is "application/vnd.attache.plan+json"`},
		{"unknown role", "audit", planType, signedPayload(t, planType, payload, ks.plans...), `no "audit" role`},
		{"type swapped after signing", RolePlans, "x", editEnvelope(t, signedPayload(t, planType, payload, ks.plans...), func(e *dsse.Envelope) { e.PayloadType = "x" }), "got 0"},
		{"url-safe base64 accepted", RolePlans, planType, editEnvelope(t, signedPayload(t, planType, []byte{0xfb, 0xff, 0xfe}, ks.plans...), func(e *dsse.Envelope) {
			p, _ := base64.StdEncoding.DecodeString(e.Payload)
			e.Payload = base64.URLEncoding.EncodeToString(p)
		}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyPayload(ctx, r, tt.role, tt.typ, tt.env)
			wantErr(t, err, tt.want)
			if err == nil && len(got) == 0 {
				t.Fatal("empty payload")
			}
		})
	}
	got, err := VerifyPayload(ctx, r, RolePlans, planType, signedPayload(t, planType, payload, ks.plans...))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("payload %q, %v", got, err)
	}
	if _, err := VerifyPayload(ctx, nil, RolePlans, planType, nil); err == nil {
		t.Error("nil root accepted")
	}
}

func TestSignPayloadRejects(t *testing.T) {
	ctx := context.Background()
	s := signers(t, 1)[0]
	for name, tc := range map[string]struct {
		typ     string
		payload []byte
		ss      []*Signer
		want    string
	}{
		"no signers":  {planType, nil, nil, "no signers"},
		"nil signer":  {planType, nil, []*Signer{nil}, "nil signer"},
		"twice":       {planType, nil, []*Signer{s, s}, "given twice"},
		"empty type":  {"", nil, []*Signer{s}, "payload type is empty"},
		"too big":     {planType, make([]byte, MaxEnvelopeSize), []*Signer{s}, "limit"},
		"fits 700KiB": {planType, make([]byte, 700<<10), []*Signer{s}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := SignPayload(ctx, tc.typ, tc.payload, tc.ss...)
			wantErr(t, err, tc.want)
		})
	}
}

func TestRootHash(t *testing.T) {
	env := []byte("envelope")
	if RootHash(env) != sha256.Sum256(env) {
		t.Fatal("RootHash is not sha256")
	}
}
