package planverify

import (
	"crypto/ed25519"
	"errors"
)

func bytesVerify(pub, msg, sig []byte) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, msg, sig)
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
