package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// tenantPlaceholder in password_secret stands for the tenant id, so each
// tenant of a step can have its own password file.
const tenantPlaceholder = "{tenant}"

var secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// secretFile is the file name password_secret gives for tenant id.
func secretFile(secret, id string) string { return strings.ReplaceAll(secret, tenantPlaceholder, id) }

// checkSecretName validates password_secret (with the placeholder
// replaced by a sample id).
func checkSecretName(secret string) error {
	if !secretNameRE.MatchString(secretFile(secret, "t")) || strings.Contains(secret, "..") {
		return fmt.Errorf("must be a file name in secrets_dir (letters, digits, '.', '_', '-', optionally %s), got %q", tenantPlaceholder, secret)
	}
	return nil
}

// readPassword reads tenant id's password from secrets_dir. The error
// names the file, never its content.
func (s *settings) readPassword(secret, id string) (string, error) {
	name := secretFile(secret, id)
	root, err := os.OpenRoot(s.SecretsDir)
	if err != nil {
		return "", fmt.Errorf("secrets_dir: %w", err)
	}
	defer root.Close()
	b, err := root.ReadFile(name)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("password secret %s in secrets_dir: %w", name, err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	switch {
	case pw == "":
		return "", fmt.Errorf("password secret %s is empty", name)
	case len(pw) > 1024:
		return "", fmt.Errorf("password secret %s is longer than 1024 bytes", name)
	}
	for _, c := range []byte(pw) {
		if c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("password secret %s holds a character that is not printable ASCII", name)
		}
	}
	return pw, nil
}

// scramVerifier returns the SCRAM-SHA-256 verifier PostgreSQL stores for
// password (RFC 5802/7677, 4096 iterations, random salt), so the password
// itself never reaches the server's statement log. Passwords are printable
// ASCII, for which SASLprep is the identity.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	return scramVerifierSalt(password, salt)
}

// scramVerifierSalt is scramVerifier with a given salt.
func scramVerifierSalt(password string, salt []byte) (string, error) {
	const iterations = 4096
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}
