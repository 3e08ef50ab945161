package opscli_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

const releaseYAML = `name: sampleapp
version: 1.4.0
images:
  web: registry.example.com/sampleapp@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
migrations:
  - {version: 1, name: create_accounts, sql: "CREATE TABLE accounts (id int)"}
flags: {checkout_v2: "false"}
tiers:
  pool: {replicas: "2"}
steps:
  - id: app
    provider: local
    action: app.deploy
    resource: "tenants/{{tenant}}/app"
    params: {image: "{{images.web}}", replicas: "{{values.replicas}}", flags: "{{flags}}"}
`

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// keygen runs `attache release keygen` into dir and returns the private
// key's path and the key id.
func keygen(t *testing.T, dir string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, "release.key")
	var out struct {
		KeyID      string `json:"key_id"`
		PrivateKey string `json:"private_key"`
		PublicKey  string `json:"public_key"`
	}
	stdout, stderr, err := run(t, "release", "keygen", "--out", key, "-o", "json")
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, stderr)
	}
	mustJSON(t, stdout, &out)
	if out.PrivateKey != key || out.PublicKey != key+".pub" {
		t.Fatalf("keygen output %+v", out)
	}
	return key, out.KeyID
}

// trustedRoot creates a control plane data directory whose trust root
// lists the public key in pub as its release key, and returns root.json.
func trustedRoot(t *testing.T, pub string) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := keys.LoadOrCreate(ctx, dir, "example.org", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	var k sign.Key
	if err := json.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.TrustReleaseKey(ctx, dir, "example.org", time.Now(), k); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, keys.RootFile)
}

func TestReleaseKeygen(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "release.key")
	stdout, stderr, err := run(t, "release", "keygen", "--out", key)
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, stderr)
	}
	if m := mode(t, key); m != 0o600 {
		t.Errorf("private key mode %04o, want 0600", m)
	}
	if m := mode(t, key+".pub"); m != 0o644 {
		t.Errorf("public key mode %04o, want 0644", m)
	}
	priv, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.ParsePKCS8PEM(priv)
	if err != nil {
		t.Fatalf("private key: %v", err)
	}
	pubJSON, _ := os.ReadFile(key + ".pub")
	var pub sign.Key
	if err := json.Unmarshal(pubJSON, &pub); err != nil || pub.Type != sign.KeyTypeEd25519 || sign.KeyID(pub) != s.KeyID() {
		t.Fatalf("public key file %s does not hold the key's public half (%v)", pubJSON, err)
	}
	if !strings.Contains(stdout, s.KeyID()) || !strings.Contains(stderr, "attache-controlplane keys trust-release-key --public-key "+key+".pub --key-id "+s.KeyID()) {
		t.Errorf("stdout %q, stderr %q", stdout, stderr)
	}

	// Never overwrites a key, nor its public half.
	if _, _, err := run(t, "release", "keygen", "--out", key); err == nil || !strings.Contains(err.Error(), key+" already exists") {
		t.Fatalf("second keygen: %v", err)
	}
	if again, _ := os.ReadFile(key); string(again) != string(priv) {
		t.Fatal("keygen overwrote the private key")
	}
	other := filepath.Join(dir, "other.key")
	writeFile(t, other+".pub", "keep me")
	if _, _, err := run(t, "release", "keygen", "--out", other); err == nil || !strings.Contains(err.Error(), other+".pub already exists") {
		t.Fatalf("keygen over a public key file: %v", err)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("keygen left a private key without its public half: %v", err)
	}
}

func TestReleaseSignAndVerify(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	key, keyID := keygen(t, dir)
	yamlFile := filepath.Join(dir, "release.yaml")
	writeFile(t, yamlFile, releaseYAML)
	signed := filepath.Join(dir, "release.signed.json")

	_, stderr, err := run(t, "release", "sign", "--key", key, yamlFile, "--out", signed)
	if err != nil {
		t.Fatalf("sign: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "signed sampleapp@1.4.0 with release key "+keyID) {
		t.Errorf("stderr %q", stderr)
	}
	env, err := os.ReadFile(signed)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := trustedRoot(t, key+".pub")
	rootEnv, _ := os.ReadFile(rootFile)
	root, err := sign.VerifyPinnedRoot(context.Background(), rootEnv)
	if err != nil {
		t.Fatal(err)
	}
	r, err := release.Verify(context.Background(), root, []byte(strings.TrimSpace(string(env))))
	if err != nil {
		t.Fatalf("signed release does not verify: %v", err)
	}
	if release.Ref(r) != "sampleapp@1.4.0" {
		t.Fatalf("verified %s", release.Ref(r))
	}

	// To standard output, from standard input.
	stdout, _, err := runIn(t, releaseYAML, "release", "sign", "--key", key, "-")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := release.Verify(context.Background(), root, []byte(strings.TrimSpace(stdout))); err != nil {
		t.Fatalf("signed release on stdout does not verify: %v", err)
	}

	// verify, against the root that trusts the key and one that does not.
	stdout, stderr, err = run(t, "release", "verify", "--root", rootFile, signed)
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, stderr)
	}
	for _, want := range []string{"sampleapp@1.4.0", keyID, "Steps:", "app", "checkout_v2=false"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("verify output lacks %q:\n%s", want, stdout)
		}
	}
	placeholderDir := t.TempDir()
	if _, err := keys.LoadOrCreate(context.Background(), placeholderDir, "example.org", time.Now()); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, "release", "verify", "--root", filepath.Join(placeholderDir, keys.RootFile), signed)
	if err == nil || !strings.Contains(err.Error(), "release signature not valid") {
		t.Fatalf("verify against a root without the key: %v", err)
	}
	if _, _, err := run(t, "release", "verify", signed); err == nil || !strings.Contains(err.Error(), "--root is required") {
		t.Fatalf("verify without --root: %v", err)
	}
}

func TestReleaseSignRefuses(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	key, _ := keygen(t, dir)
	good := filepath.Join(dir, "release.yaml")
	writeFile(t, good, releaseYAML)
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, strings.Replace(releaseYAML, "    provider: local", "    provider: local\n    dependson: [x]", 1))
	unpinned := filepath.Join(dir, "unpinned.yaml")
	writeFile(t, unpinned, strings.Replace(releaseYAML, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", ":latest", 1))
	typo := filepath.Join(dir, "typo.yaml")
	writeFile(t, typo, strings.Replace(releaseYAML, "{{images.web}}", "{{image.web}}", 1))
	openKey := filepath.Join(dir, "open.key")
	priv, _ := os.ReadFile(key)
	if err := os.WriteFile(openKey, priv, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(openKey, 0o644)
	notAKey := filepath.Join(dir, "not.key")
	writeFile(t, notAKey, "hello")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no key", []string{good}, "--key is required"},
		{"key readable by others", []string{"--key", openKey, good}, "is accessible by group or others (mode 0644)"},
		{"not a key", []string{"--key", notAKey, good}, "no PEM block"},
		{"unknown key", []string{"--key", key, bad}, "steps[0].dependson: unknown key"},
		{"image not pinned", []string{"--key", key, unpinned}, "is not an image reference pinned by digest"},
		{"placeholder typo", []string{"--key", key, typo}, "unknown placeholder {{image.web}}"},
		{"missing file", []string{"--key", key, filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"no file", []string{"--key", key}, "accepts 1 arg"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.json")
			_, _, err := run(t, append([]string{"release", "sign", "--out", out}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused sign wrote %s", out)
			}
		})
	}
}
