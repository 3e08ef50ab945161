package cpcli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/sign"
)

// auditTimeout bounds opening the store and appending the audit entry of a
// rotation.
const auditTimeout = 15 * time.Second

func newKeysCommand(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Show and rotate the plan-signing trust root and its keys",
		Long: `Show and rotate the trust root (root.json) and the signing keys in the data
directory. These commands work offline on the data directory; run them on the
control plane's host, as the user the control plane runs as.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newKeysRotateCommand(stdout, stderr), newKeysTrustReleaseKeyCommand(stdout, stderr), newKeysShowCommand(stdout))
	return cmd
}

// keysFlags are the settings the keys commands share with serve.
type keysFlags struct {
	configFile  string
	dataDir     string
	trustDomain string
	store       string
}

func (k *keysFlags) register(cmd *cobra.Command, withStore bool) {
	def := config.Default()
	f := cmd.Flags()
	f.StringVar(&k.configFile, "config", "", "the control plane's YAML config file, as given to serve (flags given explicitly override it)")
	f.StringVar(&k.dataDir, "data-dir", def.DataDir, "the control plane's data directory")
	f.StringVar(&k.trustDomain, "trust-domain", "", "trust domain the data directory must be for (default: the config file's, else the one root.json names)")
	if withStore {
		f.StringVar(&k.store, "store", "", "store to record the audit entry in: PostgreSQL URL or SQLite path (default: the config file's, else <data-dir>/attache.db)")
	}
}

// resolve returns the effective configuration like serve builds it, and the
// trust domain to check ("" when neither --trust-domain nor --config says:
// then root.json's own is used).
func (k *keysFlags) resolve(cmd *cobra.Command) (config.Config, string, error) {
	cfg := config.Default()
	td := ""
	if k.configFile != "" {
		loaded, err := config.Load(k.configFile)
		if err != nil {
			return cfg, "", err
		}
		cfg = loaded
		td = cfg.TrustDomain
	}
	flags := cmd.Flags()
	if flags.Changed("data-dir") || k.configFile == "" {
		cfg.DataDir = k.dataDir
	}
	if flags.Changed("trust-domain") {
		cfg.TrustDomain, td = k.trustDomain, k.trustDomain
	}
	if flags.Lookup("store") != nil && flags.Changed("store") {
		cfg.Store = k.store
	}
	if cfg.DataDir == "" {
		return cfg, "", errors.New("--data-dir is empty")
	}
	if err := checkOwner(cfg.DataDir); err != nil {
		return cfg, "", err
	}
	return cfg, td, nil
}

func newKeysRotateCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		kf          keysFlags
		plans, root bool
		noAudit     bool
	)
	cmd := &cobra.Command{
		Use:   "rotate (--plans | --root)",
		Short: "Replace the plans key or the root key with a new one",
		Long: `Replace a signing key of the trust root with a freshly generated one, offline,
in the data directory.

  --plans  replaces the plans key, which signs every plan.
  --root   replaces the root key, which signs the trust root itself.

Rotate at once if a key may have leaked, or on a schedule.

A rotation writes the next version of the trust root (root.json, also kept as
roots/<version>.json) that lists the new key instead of the old one and is
valid for a year from now, so rotating also renews a root that is about to
expire or has expired. The root key signs it; for --root both the old and the
new root key sign it, so agents accept it as following the root they trust.

A running control plane notices the new root within a few seconds and uses
the new key from then on, without a restart. Agents follow automatically: the
control plane sends them the newer roots at the start of their next session
and with their next plan, and each agent checks that every new root is signed
by the root it already trusts before it trusts the new one.

The old key file is moved to <data-dir>/retired/<role>-<keyid>.key. The new
root no longer trusts it, but agents that have not yet followed the rotation
still do: destroy the file (shred -u FILE) — at once if the key leaked,
otherwise when all agents have followed.

Settings are read like serve reads them (--config, --data-dir,
--trust-domain). If the control plane's store is reachable (the SQLite file in
the data directory, or the PostgreSQL URL from --store or the config file),
the rotation is also recorded in its audit trail as "keys.rotate"; if not,
the rotation still happens and a warning says so.`,
		Example: `  attache-controlplane keys rotate --plans --data-dir /var/lib/attache
  sudo -u attache attache-controlplane keys rotate --root --config /etc/attache/controlplane.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if plans == root {
				return errors.New("give exactly one of --plans (rotate the plans key) or --root (rotate the root key)")
			}
			role := sign.RolePlans
			if root {
				role = sign.RoleRoot
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
			rotate, old := keys.RotatePlans, before.PlanSigner
			if role == sign.RoleRoot {
				rotate, old = keys.RotateRoot, before.RootSigner
			}
			m, err := rotate(ctx, cfg.DataDir, td, now)
			if err != nil {
				return err
			}
			fresh := m.PlanSigner
			if role == sign.RoleRoot {
				fresh = m.RootSigner
			}
			sum := m.RootHash()
			retired := keys.RetiredPath(cfg.DataDir, role, old.KeyID())
			w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "Rotated the %s key of trust domain %s.\n", role, td)
			fmt.Fprintf(w, "old %s key:\t%s\n", role, old.KeyID())
			fmt.Fprintf(w, "new %s key:\t%s\n", role, fresh.KeyID())
			fmt.Fprintf(w, "root version:\t%d (was %d)\n", m.Root.Version, before.Root.Version)
			fmt.Fprintf(w, "root sha256:\t%s\n", hex.EncodeToString(sum[:]))
			fmt.Fprintf(w, "root expires:\t%s\n", m.Root.Expires.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "retired key:\t%s\n", retired)
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "\nDestroy the retired key file once agents have followed (at once if the key leaked):\n  shred -u %s\n"+
				"A running control plane switches to the new key within a few seconds; agents\nfollow on their next session or plan.\n", retired)

			if noAudit {
				return nil
			}
			detail := map[string]any{
				"role":                  role,
				"old_key_id":            old.KeyID(),
				"new_key_id":            fresh.KeyID(),
				"root_version":          m.Root.Version,
				"previous_root_version": before.Root.Version,
				"root_sha256":           hex.EncodeToString(sum[:]),
				"data_dir":              cfg.DataDir,
			}
			seq, err := auditRotation(ctx, cfg, now, fresh.KeyID(), detail)
			switch {
			case err != nil:
				fmt.Fprintf(stderr, "warning: the rotation is done, but it was not recorded in the audit trail: %v\n", err)
			case seq == 0:
				fmt.Fprintf(stderr, "note: no store at %s; the rotation was not recorded in the audit trail\n", cfg.StoreDSN())
			default:
				fmt.Fprintf(stdout, "Recorded in the audit trail as keys.rotate (record %d).\n", seq)
			}
			return nil
		},
	}
	kf.register(cmd, true)
	f := cmd.Flags()
	f.BoolVar(&plans, "plans", false, "rotate the plans key")
	f.BoolVar(&root, "root", false, "rotate the root key")
	f.BoolVar(&noAudit, "no-audit", false, "do not record the rotation in the store's audit trail")
	return cmd
}

// auditRotation appends the keys.rotate entry to the store cfg names. It
// returns 0 without error when that is a SQLite file that does not exist (a
// data directory whose control plane never started; Open would create it).
func auditRotation(ctx context.Context, cfg config.Config, now time.Time, target string, detail map[string]any) (uint64, error) {
	return auditKeys(ctx, cfg, now, "keys.rotate", "attache-controlplane keys rotate", target, detail)
}

// auditKeys appends an audit entry for a change of the key material, as
// auditRotation does.
func auditKeys(ctx context.Context, cfg config.Config, now time.Time, action, source, target string, detail map[string]any) (uint64, error) {
	dsn := cfg.StoreDSN()
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		if _, err := os.Stat(strings.TrimPrefix(dsn, "sqlite://")); errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, auditTimeout)
	defer cancel()
	st, err := store.Open(ctx, dsn, nil)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(detail); err != nil {
		return 0, err
	}
	rec, err := st.AppendAudit(ctx, auditlog.Entry{
		Time:    now,
		Actor:   localActor(),
		Role:    "system",
		Action:  action,
		Target:  target,
		Outcome: auditlog.OutcomeSuccess,
		Source:  source,
		Detail:  bytes.TrimRight(b.Bytes(), "\n"),
	})
	if err != nil {
		return 0, err
	}
	return rec.Seq, nil
}

// localActor names the local user running the command.
func localActor() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "local:" + u.Username
	}
	return "local:uid " + strconv.Itoa(os.Getuid())
}

func newKeysShowCommand(stdout io.Writer) *cobra.Command {
	var kf keysFlags
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the trust root: version, expiry and the keys of each role",
		Long: `Show the current trust root of the data directory: its version, hash and
expiry, the key ids of each role, the versions kept in roots/, and retired key
files still waiting to be destroyed. An expired root is shown (rotate a key to
renew it). Like rotate, show finishes a rotation a crash interrupted.`,
		Example: `  attache-controlplane keys show --data-dir /var/lib/attache`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, td, err := kf.resolve(cmd)
			if err != nil {
				return err
			}
			now := time.Now()
			m, err := keys.LoadExisting(cmd.Context(), cfg.DataDir, td, now)
			if err != nil {
				return err
			}
			r := m.Root
			sum := m.RootHash()
			expiry := r.Expires.UTC().Format(time.RFC3339)
			if left := r.Expires.Sub(now); left > 0 {
				expiry += fmt.Sprintf(" (in %s)", days(left))
			} else {
				expiry += fmt.Sprintf(" (EXPIRED %s ago: rotate a key to renew it)", days(-left))
			}
			chain := m.RootChain(0)
			w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "data dir:\t%s\n", cfg.DataDir)
			fmt.Fprintf(w, "trust domain:\t%s\n", r.TrustDomain)
			fmt.Fprintf(w, "root version:\t%d\n", r.Version)
			fmt.Fprintf(w, "root sha256:\t%s\n", hex.EncodeToString(sum[:]))
			fmt.Fprintf(w, "expires:\t%s\n", expiry)
			fmt.Fprintf(w, "history:\tversions %d-%d in %s\n", r.Version-len(chain)+1, r.Version, filepath.Join(cfg.DataDir, keys.RootsDir))
			for _, role := range []string{sign.RoleRoot, sign.RolePlans, sign.RoleReleases} {
				rk := r.Roles[role]
				fmt.Fprintf(w, "%s keys:\t%s (threshold %d)\n", role, strings.Join(rk.KeyIDs, ", "), rk.Threshold)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			entries, err := os.ReadDir(filepath.Join(cfg.DataDir, keys.RetiredDir))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if len(entries) > 0 {
				fmt.Fprintf(stdout, "\nRetired key files to destroy (shred -u FILE) once agents have followed:\n")
				for _, e := range entries {
					fmt.Fprintf(stdout, "  %s\n", filepath.Join(cfg.DataDir, keys.RetiredDir, e.Name()))
				}
			}
			return nil
		},
	}
	kf.register(cmd, false)
	return cmd
}

// days renders a duration in whole days, or hours below two days.
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}
