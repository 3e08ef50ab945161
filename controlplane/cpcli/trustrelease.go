package cpcli

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
)

func newKeysTrustReleaseKeyCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		kf         keysFlags
		publicKey  string
		expectedID string
		noAudit    bool
	)
	cmd := &cobra.Command{
		Use:   "trust-release-key --public-key release.key.pub",
		Short: "Make the vendor's release key the only key that may sign releases",
		Long: `Make the vendor's own release key, generated offline with
"attache release keygen" (its private half stays in the vendor's CI), the only
key of the trust root's releases role, offline, in the data directory.

Agents run only plans rendered from a release signed by that key, and check
that every plan is exactly what its release renders. Once the control plane
no longer holds a release private key, a control plane whose keys are stolen
can still choose who gets a signed release and when, but cannot make an agent
run an image, manifest, migration or step that the release key did not sign.

This writes the next version of the trust root (root.json, also kept as
roots/<version>.json), signed by the root key and valid for a year from now,
whose releases role lists exactly the given key (threshold 1). The placeholder
release key that the control plane created on its first start
(<data-dir>/release.key) is moved to <data-dir>/retired/releases-<keyid>.key;
destroy it (shred -u FILE). Run the command again with a new key to replace
the release key.

A running control plane notices the new root within a few seconds; agents
follow it on their next session or plan, checking that it is signed by the
root they trust. Compare the key id printed with the one "attache release
keygen" printed (or pass it with --key-id, which must then match).

Settings are read like serve reads them (--config, --data-dir,
--trust-domain). The change is recorded in the store's audit trail as
"keys.trust_release_key" when the store is reachable.`,
		Example: `  attache-controlplane keys trust-release-key --public-key release.key.pub --data-dir /var/lib/attache
  sudo -u attache attache-controlplane keys trust-release-key --public-key release.key.pub \
      --key-id 3f2a… --config /etc/attache/controlplane.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if publicKey == "" {
				return errors.New("--public-key is required: the release.key.pub file that `attache release keygen` wrote")
			}
			key, err := readPublicKey(publicKey)
			if err != nil {
				return err
			}
			id := sign.KeyID(key)
			if expectedID != "" && expectedID != id {
				return fmt.Errorf("%s holds key %s, not the expected --key-id %s; nothing was changed", publicKey, id, expectedID)
			}
			cfg, td, err := kf.resolve(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			now := time.Now()
			before, err := keys.LoadExisting(ctx, cfg.DataDir, td, now)
			if err != nil {
				return err
			}
			td = before.Root.TrustDomain
			oldIDs := slices.Clone(before.Root.Roles[sign.RoleReleases].KeyIDs)
			m, err := keys.TrustReleaseKey(ctx, cfg.DataDir, td, now, key)
			if err != nil {
				return err
			}
			sum := m.RootHash()
			var retired []string
			for _, old := range oldIDs {
				p := keys.RetiredPath(cfg.DataDir, sign.RoleReleases, old)
				if ok, _ := securefile.Exists(p); ok {
					retired = append(retired, p)
				}
			}
			w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "Trusted the release key of trust domain %s.\n", td)
			fmt.Fprintf(w, "release key:\t%s\n", id)
			for _, old := range oldIDs {
				fmt.Fprintf(w, "replaced release key:\t%s\n", old)
			}
			fmt.Fprintf(w, "root version:\t%d (was %d)\n", m.Root.Version, before.Root.Version)
			fmt.Fprintf(w, "root sha256:\t%s\n", hex.EncodeToString(sum[:]))
			fmt.Fprintf(w, "root expires:\t%s\n", m.Root.Expires.UTC().Format(time.RFC3339))
			for _, p := range retired {
				fmt.Fprintf(w, "retired key:\t%s\n", p)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if len(retired) > 0 {
				fmt.Fprintf(stdout, "\nThe control plane no longer holds a release private key. Destroy the retired placeholder:\n")
				for _, p := range retired {
					fmt.Fprintf(stdout, "  shred -u %s\n", p)
				}
			}
			fmt.Fprintf(stdout, "Agents follow the new root on their next session or plan; from then on they run\nonly releases signed by key %s.\n", id)

			if noAudit {
				return nil
			}
			detail := map[string]any{
				"role":                  sign.RoleReleases,
				"old_key_ids":           oldIDs,
				"new_key_id":            id,
				"root_version":          m.Root.Version,
				"previous_root_version": before.Root.Version,
				"root_sha256":           hex.EncodeToString(sum[:]),
				"data_dir":              cfg.DataDir,
			}
			seq, err := auditKeys(ctx, cfg, now, "keys.trust_release_key", "attache-controlplane keys trust-release-key", id, detail)
			switch {
			case err != nil:
				fmt.Fprintf(stderr, "warning: the release key is trusted, but this was not recorded in the audit trail: %v\n", err)
			case seq == 0:
				fmt.Fprintf(stderr, "note: no store at %s; the change was not recorded in the audit trail\n", cfg.StoreDSN())
			default:
				fmt.Fprintf(stdout, "Recorded in the audit trail as keys.trust_release_key (record %d).\n", seq)
			}
			return nil
		},
	}
	kf.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&publicKey, "public-key", "", "the release key's public half, as `attache release keygen` wrote it (release.key.pub)")
	f.StringVar(&expectedID, "key-id", "", "the key id `attache release keygen` printed; the command refuses a public key with another id")
	f.BoolVar(&noAudit, "no-audit", false, "do not record the change in the store's audit trail")
	return cmd
}

// readPublicKey reads a release.key.pub file: one sign.Key in JSON
// ({"type":"ed25519","public":"<base64>"}), strictly.
func readPublicKey(path string) (sign.Key, error) {
	data, err := securefile.ReadPublic(path)
	if err != nil {
		return sign.Key{}, fmt.Errorf("--public-key: %w", err)
	}
	var k sign.Key
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&k); err != nil {
		return sign.Key{}, fmt.Errorf("--public-key %s: not a public key file (want {\"type\":\"ed25519\",\"public\":\"<base64>\"}, as `attache release keygen` writes): %w", filepath.Base(path), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return sign.Key{}, fmt.Errorf("--public-key %s: data after the key", filepath.Base(path))
	}
	if k.Type != sign.KeyTypeEd25519 || len(k.Public) != ed25519.PublicKeySize {
		return sign.Key{}, fmt.Errorf("--public-key %s: want an %s key of %d bytes, got type %.32q of %d bytes", filepath.Base(path), sign.KeyTypeEd25519, ed25519.PublicKeySize, k.Type, len(k.Public))
	}
	return k, nil
}
