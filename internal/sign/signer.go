package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// KeyTypeEd25519 is the only key type a Root may hold.
const KeyTypeEd25519 = "ed25519"

// Key is a public key as listed in a Root.
type Key struct {
	Type   string `json:"type"` // "ed25519"
	Public []byte `json:"public"`
}

// KeyID returns the id of k: the hex sha256 of its public key bytes.
func KeyID(k Key) string {
	h := sha256.Sum256(k.Public)
	return hex.EncodeToString(h[:])
}

// Signer holds an ed25519 private key.
type Signer struct {
	priv ed25519.PrivateKey
	id   string
}

// GenerateSigner returns a Signer with a fresh key from crypto/rand.
func GenerateSigner() (*Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return NewSigner(priv), nil
}

// NewSigner wraps priv. It panics if priv is not an ed25519 private key of the
// right length, which is a programming error.
func NewSigner(priv ed25519.PrivateKey) *Signer {
	if len(priv) != ed25519.PrivateKeySize {
		panic(fmt.Sprintf("sign: ed25519 private key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize))
	}
	s := &Signer{priv: bytes.Clone(priv)}
	s.id = KeyID(s.PublicKey())
	return s
}

// KeyID returns the id of the signer's public key.
func (s *Signer) KeyID() string { return s.id }

// PublicKey returns the public half as listed in a Root.
func (s *Signer) PublicKey() Key {
	return Key{Type: KeyTypeEd25519, Public: bytes.Clone(s.priv.Public().(ed25519.PublicKey))}
}

// MarshalPKCS8PEM returns the private key as a PKCS#8 "PRIVATE KEY" PEM block.
func (s *Signer) MarshalPKCS8PEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.priv)
	if err != nil {
		return nil, fmt.Errorf("marshal ed25519 key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePKCS8PEM parses a single PKCS#8 "PRIVATE KEY" PEM block holding an
// ed25519 key. Anything but whitespace around the block is refused.
func ParsePKCS8PEM(data []byte) (*Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the PEM block")
	}
	if block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("PEM block is %q, want \"PRIVATE KEY\" (PKCS#8)", block.Type)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("PEM block has headers; encrypted keys are not supported")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8 key: %w", err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ed25519", key)
	}
	return NewSigner(priv), nil
}

// dsseSigner adapts a Signer to dsse.Signer.
type dsseSigner struct{ s *Signer }

func (d dsseSigner) Sign(_ context.Context, data []byte) ([]byte, error) {
	return ed25519.Sign(d.s.priv, data), nil
}

func (d dsseSigner) KeyID() (string, error) { return d.s.id, nil }

// verifier adapts one Root key to dsse.Verifier.
type verifier struct {
	id  string
	pub ed25519.PublicKey
}

func (v verifier) Verify(_ context.Context, data, sig []byte) error {
	if len(v.pub) != ed25519.PublicKeySize || !ed25519.Verify(v.pub, data, sig) {
		return errors.New("ed25519: invalid signature")
	}
	return nil
}

func (v verifier) KeyID() (string, error) { return v.id, nil }

func (v verifier) Public() crypto.PublicKey { return v.pub }
