// Package jointoken builds and parses the one-time join token an agent
// presents to enroll with the control plane.
//
// A token carries everything a fresh agent needs to reach and trust the
// control plane (kubeadm-style): the agent endpoint, the SPIFFE trust domain,
// a pin of the trust-domain CA key, a pin of the signed trust root, and a
// random secret that the control plane stores only as a hash. Parse is strict
// and fuzzed; its errors name the offending field and never echo the secret or
// the raw token.
//
// Imported by the control plane, the agent and the installer; never by
// providers.
package jointoken

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Prefix starts every join token; the version in it changes with the format.
const Prefix = "attache-join-v1."

const (
	// MaxLen is the longest token Parse accepts, in bytes, before trimming.
	MaxLen = 4096

	secretLen = 32
	idLen     = 8 // bytes; 16 hex characters

	// maxUnix bounds the expiry to years 1970 through 9999.
	maxUnix = 253402300799
)

// Token is a decoded join token. Treat the whole value as a secret: its
// String form embeds Secret. Log it with slog (LogValue redacts) or print
// the redacted form with fmt; call String explicitly only to hand the token
// to the person who installs the agent.
type Token struct {
	Addr            string    // control plane agent endpoint host:port
	TrustDomain     string    // SPIFFE trust domain
	CAKeySHA256     [32]byte  // sha256 of the DER SubjectPublicKeyInfo of the trust-domain CA (kubeadm-style pin)
	TrustRootSHA256 [32]byte  // sha256 of the signed trust-root envelope bytes
	ID              string    // public token id: 16 lowercase hex chars
	Secret          []byte    // 32 random bytes; never logged
	ExpiresAt       time.Time // informational for the agent; the server is authoritative
}

// wire is the JSON form inside the token. Keep the field set in sync with
// wireFields.
type wire struct {
	Addr        string `json:"addr"`
	TrustDomain string `json:"td"`
	CAKey       string `json:"ca_sha256"`
	TrustRoot   string `json:"root_sha256"`
	ID          string `json:"id"`
	Secret      string `json:"secret"`
	Expires     int64  `json:"exp"`
}

// Field names as they appear in the token, used in error messages.
const (
	fieldAddr      = "addr"
	fieldTD        = "td"
	fieldCAKey     = "ca_sha256"
	fieldTrustRoot = "root_sha256"
	fieldID        = "id"
	fieldSecret    = "secret"
	fieldExp       = "exp"
)

// wireFields maps each allowed JSON key to whether its value is a string
// (true) or a number (false).
var wireFields = map[string]bool{
	fieldAddr:      true,
	fieldTD:        true,
	fieldCAKey:     true,
	fieldTrustRoot: true,
	fieldID:        true,
	fieldSecret:    true,
	fieldExp:       false,
}

var secretEncoding = base64.RawURLEncoding.Strict()

// New returns a token with a fresh random ID and Secret that expires ttl
// after now (rounded down to the second).
func New(addr, trustDomain string, caKeySHA256, trustRootSHA256 [32]byte, ttl time.Duration, now time.Time) (Token, error) {
	if ttl <= 0 {
		return Token{}, fmt.Errorf("join token ttl must be positive, got %s", ttl)
	}
	var id [idLen]byte
	secret := make([]byte, secretLen)
	if _, err := io.ReadFull(rand.Reader, id[:]); err != nil {
		return Token{}, fmt.Errorf("join token id: %w", err)
	}
	if _, err := io.ReadFull(rand.Reader, secret); err != nil {
		return Token{}, fmt.Errorf("join token secret: %w", err)
	}
	t := Token{
		Addr:            addr,
		TrustDomain:     trustDomain,
		CAKeySHA256:     caKeySHA256,
		TrustRootSHA256: trustRootSHA256,
		ID:              hex.EncodeToString(id[:]),
		Secret:          secret,
		ExpiresAt:       now.Add(ttl).Truncate(time.Second).UTC(),
	}
	if err := t.Validate(); err != nil {
		return Token{}, err
	}
	return t, nil
}

// String returns the full token, secret included: Prefix followed by the
// unpadded base64url encoding of compact JSON.
func (t Token) String() string {
	w := wire{
		Addr:        t.Addr,
		TrustDomain: t.TrustDomain,
		CAKey:       hex.EncodeToString(t.CAKeySHA256[:]),
		TrustRoot:   hex.EncodeToString(t.TrustRootSHA256[:]),
		ID:          t.ID,
		Secret:      secretEncoding.EncodeToString(t.Secret),
		Expires:     t.ExpiresAt.Unix(),
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(w); err != nil {
		// Only strings and an int64: cannot fail.
		panic("jointoken: encode: " + err.Error())
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return Prefix + base64.RawURLEncoding.EncodeToString(body)
}

// Format prints the redacted form for every fmt verb, so that a token passed
// to fmt or log by mistake does not leak its secret. Call String to get the
// usable token.
func (t Token) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "jointoken{id=%s addr=%s trust_domain=%s expires=%s secret=REDACTED}",
		t.ID, t.Addr, t.TrustDomain, t.ExpiresAt.UTC().Format(time.RFC3339))
}

// LogValue implements slog.LogValuer. It leaves the secret out.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", t.ID),
		slog.String("addr", t.Addr),
		slog.String("trust_domain", t.TrustDomain),
		slog.Time("expires_at", t.ExpiresAt),
	)
}

// SecretHash returns sha256(Secret), the form the control plane stores.
func (t Token) SecretHash() []byte {
	h := sha256.Sum256(t.Secret)
	return h[:]
}

// Equal reports whether t and u are the same token. It compares the secret in
// constant time.
func (t Token) Equal(u Token) bool {
	return t.Addr == u.Addr &&
		t.TrustDomain == u.TrustDomain &&
		t.CAKeySHA256 == u.CAKeySHA256 &&
		t.TrustRootSHA256 == u.TrustRootSHA256 &&
		t.ID == u.ID &&
		len(t.Secret) == len(u.Secret) &&
		subtle.ConstantTimeCompare(t.Secret, u.Secret) == 1 &&
		t.ExpiresAt.Equal(u.ExpiresAt)
}

// Validate reports every problem with t at once.
func (t Token) Validate() error {
	var errs []error
	add := func(field string, err error) {
		if err != nil {
			errs = append(errs, fieldError(field, err))
		}
	}
	add(fieldAddr, checkAddr(t.Addr))
	add(fieldTD, checkTrustDomain(t.TrustDomain))
	add(fieldCAKey, checkHashSet(t.CAKeySHA256))
	add(fieldTrustRoot, checkHashSet(t.TrustRootSHA256))
	add(fieldID, checkID(t.ID))
	if len(t.Secret) != secretLen {
		add(fieldSecret, fmt.Errorf("must be %d bytes, got %d", secretLen, len(t.Secret)))
	}
	add(fieldExp, checkExpiry(t.ExpiresAt))
	return errors.Join(errs...)
}

// Parse decodes and validates a token. Surrounding whitespace is ignored.
// Errors name the offending field and never contain the secret or the token.
func Parse(s string) (Token, error) {
	if len(s) > MaxLen {
		return Token{}, fmt.Errorf("join token is too long: %d bytes, limit %d", len(s), MaxLen)
	}
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return Token{}, errors.New("not an Attaché join token (expected prefix " + Prefix + ")")
	}
	body, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return Token{}, fmt.Errorf("join token is not valid base64url after the prefix (bad input at byte %d)", int64(ce)+int64(len(Prefix)))
		}
		return Token{}, errors.New("join token is not valid base64url after the prefix")
	}
	if err := checkShape(body); err != nil {
		return Token{}, err
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		// checkShape already vetted the structure, so this is a type
		// mismatch; name the field, not the value.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == fieldExp {
			return Token{}, fieldError(fieldExp, errors.New("must be an integer Unix time in seconds"))
		}
		if errors.As(err, &te) && te.Field != "" {
			return Token{}, fieldError(te.Field, errors.New("has the wrong type"))
		}
		return Token{}, errors.New("join token payload is not valid JSON")
	}
	if dec.More() {
		return Token{}, errors.New("join token payload has data after the JSON object")
	}
	return fromWire(w)
}

// checkShape walks the JSON tokens: exactly one object whose keys are known,
// spelled exactly, not repeated, with a string or number value each, and
// nothing after it. encoding/json alone would accept duplicate keys and keys
// that differ in case.
func checkShape(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	syntax := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("join token payload is not valid JSON (at byte %d)", se.Offset)
		}
		return errors.New("join token payload is not valid JSON")
	}
	tok, err := dec.Token()
	if err != nil {
		return syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("join token payload is not a JSON object")
	}
	seen := make(map[string]bool, len(wireFields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntax(err)
		}
		key, _ := tok.(string)
		isString, known := wireFields[key]
		if !known {
			return errors.New("join token payload has an unknown field")
		}
		if seen[key] {
			return fieldError(key, errors.New("appears more than once"))
		}
		seen[key] = true
		tok, err = dec.Token()
		if err != nil {
			return syntax(err)
		}
		switch tok.(type) {
		case string:
			if !isString {
				return fieldError(key, errors.New("must be a number"))
			}
		case json.Number:
			if isString {
				return fieldError(key, errors.New("must be a string"))
			}
		default:
			if isString {
				return fieldError(key, errors.New("must be a string"))
			}
			return fieldError(key, errors.New("must be a number"))
		}
	}
	if _, err := dec.Token(); err != nil { // closing '}'
		return syntax(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("join token payload has data after the JSON object")
	}
	var missing []error
	for _, f := range []string{fieldAddr, fieldTD, fieldCAKey, fieldTrustRoot, fieldID, fieldSecret, fieldExp} {
		if !seen[f] {
			missing = append(missing, fieldError(f, errors.New("is missing")))
		}
	}
	return errors.Join(missing...)
}

func fromWire(w wire) (Token, error) {
	t := Token{
		Addr:        w.Addr,
		TrustDomain: w.TrustDomain,
		ID:          w.ID,
	}
	var errs []error
	add := func(field string, err error) {
		if err != nil {
			errs = append(errs, fieldError(field, err))
		}
	}
	add(fieldAddr, checkAddr(w.Addr))
	add(fieldTD, checkTrustDomain(w.TrustDomain))
	var err error
	t.CAKeySHA256, err = parseHash(w.CAKey)
	if err == nil {
		err = checkHashSet(t.CAKeySHA256)
	}
	add(fieldCAKey, err)
	t.TrustRootSHA256, err = parseHash(w.TrustRoot)
	if err == nil {
		err = checkHashSet(t.TrustRootSHA256)
	}
	add(fieldTrustRoot, err)
	add(fieldID, checkID(w.ID))
	t.Secret, err = parseSecret(w.Secret)
	add(fieldSecret, err)
	if w.Expires <= 0 || w.Expires > maxUnix {
		add(fieldExp, errors.New("must be a Unix time in seconds between 1970 and 9999"))
	} else {
		t.ExpiresAt = time.Unix(w.Expires, 0).UTC()
	}
	if err := errors.Join(errs...); err != nil {
		return Token{}, err
	}
	return t, nil
}

func fieldError(field string, err error) error {
	return fmt.Errorf("join token field %q %w", field, err)
}

func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("is empty; want host:port")
	}
	if len(addr) > 261 {
		return errors.New("is too long for host:port")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("is not host:port")
	}
	var errs []error
	if host == "" {
		errs = append(errs, errors.New("has an empty host"))
	} else if !validHost(host) {
		errs = append(errs, errors.New("has an invalid host; want a DNS name or an IP address"))
	}
	if !validPort(port) {
		errs = append(errs, errors.New("has an invalid port; want 1-65535"))
	}
	if len(errs) == 0 {
		return nil
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("%v and %v", errs[0], errs[1])
}

func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 || (len(p) > 1 && p[0] == '0') {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	if len(h) > 253 {
		return false
	}
	h = strings.TrimSuffix(h, ".")
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

func checkTrustDomain(td string) error {
	if td == "" {
		return errors.New("is empty; want a SPIFFE trust domain such as example.org")
	}
	parsed, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return fmt.Errorf("is not a valid SPIFFE trust domain: %w", err)
	}
	if parsed.Name() != td {
		return errors.New("must be a bare trust domain name such as example.org, not a SPIFFE ID")
	}
	return nil
}

func parseHash(s string) ([32]byte, error) {
	var h [32]byte
	if len(s) != 64 || !isLowerHex(s) {
		return h, errors.New("must be 64 lowercase hex characters (a SHA-256 hash)")
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, errors.New("must be 64 lowercase hex characters (a SHA-256 hash)")
	}
	return h, nil
}

func checkHashSet(h [32]byte) error {
	if h == ([32]byte{}) {
		return errors.New("is all zeros; want a SHA-256 hash")
	}
	return nil
}

func checkID(id string) error {
	if len(id) != 2*idLen || !isLowerHex(id) {
		return fmt.Errorf("must be %d lowercase hex characters", 2*idLen)
	}
	return nil
}

func parseSecret(s string) ([]byte, error) {
	if len(s) != secretEncoding.EncodedLen(secretLen) {
		return nil, fmt.Errorf("must be %d bytes in unpadded base64url (%d characters)", secretLen, secretEncoding.EncodedLen(secretLen))
	}
	b, err := secretEncoding.DecodeString(s)
	if err != nil || len(b) != secretLen {
		return nil, fmt.Errorf("must be %d bytes in unpadded base64url", secretLen)
	}
	return b, nil
}

func checkExpiry(t time.Time) error {
	if t.IsZero() {
		return errors.New("is missing")
	}
	if u := t.Unix(); u <= 0 || u > maxUnix {
		return errors.New("must be between 1970 and 9999")
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
