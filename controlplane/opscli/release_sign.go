package opscli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
	"attache.dev/attache/internal/textout"
)

// pubSuffix is appended to the private key's path for the public key file.
const pubSuffix = ".pub"

func newReleaseKeygenCommand(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen [--out release.key]",
		Short: "Create the vendor's release key (offline)",
		Long: `Generate an ed25519 release key, offline. The private key is written to --out
(PKCS#8 PEM, mode 0600) and its public half to --out.pub, in the form the
trust root lists keys ({"type":"ed25519","public":"<base64>"}). Existing files
are never overwritten. The key id printed is the sha256 of the public key.

Keep the private key where releases are signed (the vendor's CI secret store),
never on the control plane. Give the .pub file to the control plane's
operator, who makes it the trust root's release key:

  attache-controlplane keys trust-release-key --public-key release.key.pub --key-id <id>`,
		Example: `  attache release keygen --out release.key`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is empty")
			}
			pubPath := out + pubSuffix
			for _, p := range []string{out, pubPath} {
				if ok, err := securefile.Exists(p); err != nil {
					return err
				} else if ok {
					return fmt.Errorf("%s already exists; not overwriting a key (remove it, or choose another --out)", p)
				}
			}
			s, err := sign.GenerateSigner()
			if err != nil {
				return err
			}
			pemBytes, err := s.MarshalPKCS8PEM()
			if err != nil {
				return err
			}
			pub, err := json.Marshal(s.PublicKey())
			if err != nil {
				return err
			}
			if err := securefile.Create(out, pemBytes); err != nil {
				return err
			}
			if err := createPublic(pubPath, append(pub, '\n')); err != nil {
				os.Remove(out) // no private key without its public half
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, map[string]string{"key_id": s.KeyID(), "private_key": out, "public_key": pubPath})
			}
			if err := fields(g.stdout, [][2]string{
				{"Key ID", s.KeyID()},
				{"Private key", out + " (mode 0600; keep it in the vendor's CI, never on the control plane)"},
				{"Public key", pubPath},
			}); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "trust it on the control plane with:\n  attache-controlplane keys trust-release-key --public-key %s --key-id %s\n", pubPath, s.KeyID())
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "release.key", "file for the private key; the public key goes to the same path plus .pub")
	return cmd
}

// createPublic writes data to path, mode 0644, only if path does not exist.
func createPublic(path string, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

func newReleaseSignCommand(g *globals) *cobra.Command {
	var keyFile, out string
	cmd := &cobra.Command{
		Use:   "sign --key release.key [--out release.signed.json] FILE|-",
		Short: "Validate a release document and sign it with the release key (offline)",
		Long: `Read the release YAML in FILE (- reads standard input), check it (unknown keys,
types and every rule; errors name the field), render its steps for every tier
it lists to make sure they are valid plan steps, and sign it with the release
key in --key. The signed release (a DSSE envelope, JSON) is written to --out,
or to standard output.

The key file must not be readable by group or others (chmod 600), as ssh
requires of its keys. Runs offline: the control plane is not contacted.`,
		Example: `  attache release sign --key release.key release.yaml --out release.signed.json
  render-release | attache release sign --key "$RELEASE_KEY_FILE" - > release.signed.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "" {
				return errors.New("--key is required: the private release key (attache release keygen)")
			}
			keyPEM, err := securefile.Read(keyFile)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			signer, err := sign.ParsePKCS8PEM(keyPEM)
			if err != nil {
				return fmt.Errorf("--key %s: %w", keyFile, err)
			}
			yamlDoc, name, err := readReleaseFile(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			r, err := release.ParseYAML(yamlDoc)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := r.Validate(); err != nil {
				return fmt.Errorf("%s: release %s: %w", name, release.Ref(r), err)
			}
			env, err := release.Sign(cmd.Context(), r, signer)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if out == "" || out == "-" {
				if _, err := g.stdout.Write(append(env, '\n')); err != nil {
					return err
				}
			} else if err := writeFileAtomic(out, append(env, '\n')); err != nil {
				return err
			}
			where := "standard output"
			if out != "" && out != "-" {
				where = out
			}
			fmt.Fprintf(g.stderr, "signed %s with release key %s (%d bytes) to %s\n", release.Ref(r), signer.KeyID(), len(env), where)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the private release key file (PKCS#8 PEM, mode 0600) (required)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the signed release to (default: standard output)")
	return cmd
}

// readReleaseFile reads a release's YAML from path, or from stdin for "-",
// and returns it with a name for errors.
func readReleaseFile(stdin io.Reader, path string) ([]byte, string, error) {
	var (
		r    io.Reader
		name = path
	)
	if path == "-" {
		r, name = stdin, "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, name, fmt.Errorf("read release: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, release.MaxYAMLBytes+1))
	if err != nil {
		return nil, name, fmt.Errorf("read release from %s: %w", name, err)
	}
	if len(b) > release.MaxYAMLBytes {
		return nil, name, fmt.Errorf("release in %s is larger than %d bytes (2 MiB)", name, release.MaxYAMLBytes)
	}
	if strings.TrimSpace(string(b)) == "" {
		return nil, name, fmt.Errorf("release in %s is empty", name)
	}
	return b, name, nil
}

// writeFileAtomic replaces path with data, mode 0644, through a temporary
// file in the same directory.
func writeFileAtomic(path string, data []byte) error {
	if err := securefile.Write(path, data); err != nil {
		return err
	}
	return os.Chmod(path, 0o644)
}

func newReleaseVerifyCommand(g *globals) *cobra.Command {
	var rootFile string
	cmd := &cobra.Command{
		Use:   "verify --root root.json FILE|-",
		Short: "Verify a signed release against a trust root (offline)",
		Long: `Check that the signed release in FILE (- reads standard input) is signed by the
release key(s) of the trust root in --root (root.json from the control
plane's data directory, a signed trust root), decodes strictly and is valid,
as an agent checks it. Prints what the release holds. Runs offline; the
trust root's own signature is checked, but --root is trusted as given.`,
		Example: `  attache release verify --root /var/lib/attache/root.json release.signed.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rootFile == "" {
				return errors.New("--root is required: a signed trust root (root.json)")
			}
			rootEnv, err := os.ReadFile(rootFile)
			if err != nil {
				return fmt.Errorf("--root: %w", err)
			}
			root, err := sign.VerifyPinnedRoot(cmd.Context(), rootEnv)
			if err != nil {
				return fmt.Errorf("--root %s: %w", rootFile, err)
			}
			if !time.Now().Before(root.Expires) {
				fmt.Fprintf(g.stderr, "warning: trust root version %d expired at %s; agents refuse every plan under it until it is rotated\n",
					root.Version, root.Expires.UTC().Format(time.RFC3339))
			}
			env, name, err := readSignedRelease(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			r, err := release.Verify(cmd.Context(), root, env)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if g.json() {
				return textout.JSON(g.stdout, r)
			}
			keys := root.Roles[sign.RoleReleases]
			tiers := "-"
			if len(r.Tiers) > 0 {
				var ts []string
				for _, t := range release.AllTiers {
					if _, ok := r.Tiers[t]; ok {
						ts = append(ts, t)
					}
				}
				tiers = strings.Join(ts, ", ")
			}
			var steps []string
			for _, s := range r.Steps {
				steps = append(steps, s.ID)
			}
			var images []string
			for _, k := range slices.Sorted(maps.Keys(r.Images)) {
				images = append(images, k+"="+r.Images[k])
			}
			return fields(g.stdout, [][2]string{
				{"Release", release.Ref(r)},
				{"Signed by", "releases role of trust domain " + root.TrustDomain + " (root version " + strconv.Itoa(root.Version) + "): " + strings.Join(keys.KeyIDs, ", ")},
				{"Images", orDash(strings.Join(images, " "))},
				{"Manifests", strconv.Itoa(len(r.Manifests)) + " bytes"},
				{"Migrations", strconv.Itoa(len(r.Migrations))},
				{"Flags", formatLabels(r.Flags)},
				{"Tiers", tiers},
				{"Steps", strings.Join(steps, ", ")},
			})
		},
	}
	cmd.Flags().StringVar(&rootFile, "root", "", "the signed trust root to verify against (root.json) (required)")
	return cmd
}

// readSignedRelease reads a signed release from path, or stdin for "-",
// and returns it with a name for errors. Verify judges what it holds.
func readSignedRelease(stdin io.Reader, path string) ([]byte, string, error) {
	var (
		r    io.Reader
		name = path
	)
	if path == "-" {
		r, name = stdin, "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, name, fmt.Errorf("read signed release: %w", err)
		}
		defer f.Close()
		r = f
	}
	const limit = release.MaxEnvelopeBytes + 64<<10 // room for whitespace around it
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, name, fmt.Errorf("read signed release from %s: %w", name, err)
	}
	if len(b) > limit {
		return nil, name, fmt.Errorf("%s is larger than a signed release may be (%d bytes, 768 KiB)", name, release.MaxEnvelopeBytes)
	}
	return bytes.TrimSpace(b), name, nil
}
