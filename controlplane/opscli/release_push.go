package opscli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/textout"
)

// releaseServerCmds are the `release` subcommands that talk to the control
// plane: push, list and show (keygen, sign and verify work offline).
func releaseServerCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newReleasePushCommand(g), newReleaseListCommand(g), newReleaseShowCommand(g)}
}

func newReleasePushCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "push FILE|-",
		Short: "Push a signed release to the control plane",
		Long: `Push a release signed with the vendor's release key (the JSON file that
attache release sign writes; - reads standard input). The control plane
verifies the signature against its trust root (the release key must be
trusted there: attache-controlplane keys trust-release-key), checks the
release and that every plan rendered from it fits, and stores it. Releases
are immutable: pushing a version that exists is refused; push a new version.

An unsigned release document (release.yaml) is refused: sign it first. Needs
the admin or operator role.`,
		Example: `  attache release sign --key release.key release.yaml --out release.signed.json
  attache release push release.signed.json
  attache release sign --key release.key release.yaml | attache release push -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := readPushEnvelope(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.PushRelease(cmd.Context(), env)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, r)
			}
			if err := fields(g.stdout, [][2]string{
				{"Release", r.Name + "@" + r.Version},
				{"Digest", r.Digest},
				{"Images", strconv.Itoa(len(r.Images))},
				{"Migrations", strconv.Itoa(len(r.Migrations))},
				{"Flags", formatLabels(r.Flags)},
				{"Steps", strconv.Itoa(len(r.Steps))},
				{"Signed by", orDash(strings.Join(r.SigningKeys, ", "))},
			}); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "roll it out with: attache rollout start --release %s --selector all --waves canary:1,50%%,100%%\n", r.Version)
			return nil
		},
	}
}

// readPushEnvelope reads a signed release envelope from path ("-":
// stdin) and checks it is one, so an unsigned document gets a useful
// answer before anything is sent.
func readPushEnvelope(stdin io.Reader, path string) ([]byte, error) {
	var (
		r    io.Reader
		name = path
	)
	if path == "-" {
		r, name = stdin, "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read release: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, release.MaxEnvelopeBytes+64<<10+1))
	if err != nil {
		return nil, fmt.Errorf("read release from %s: %w", name, err)
	}
	if len(b) > release.MaxEnvelopeBytes+64<<10 {
		return nil, fmt.Errorf("%s is larger than a signed release may be (%d bytes, 768 KiB)", name, release.MaxEnvelopeBytes)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", name)
	}
	var probe struct {
		PayloadType string `json:"payloadType"`
	}
	if b[0] != '{' || json.Unmarshal(b, &probe) != nil || probe.PayloadType == "" {
		return nil, fmt.Errorf("%s is not a signed release (a DSSE envelope in JSON); sign the release document first: attache release sign --key release.key release.yaml --out release.signed.json, then push release.signed.json", name)
	}
	if probe.PayloadType != release.PayloadType {
		return nil, fmt.Errorf("%s is signed, but it is not a release: its payload type is %.100q, want %q", name, probe.PayloadType, release.PayloadType)
	}
	return b, nil
}

func newReleaseListCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List pushed releases, newest first",
		Example: `  attache release list
  attache release list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.ListReleases(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, rs)
			}
			rows := make([][]string, 0, len(rs))
			for _, r := range rs {
				rows = append(rows, []string{r.Version, r.Name, shortDigest(r.Digest), strconv.Itoa(len(r.Images)),
					strconv.Itoa(len(r.Migrations)), strconv.Itoa(len(r.Flags)), strconv.Itoa(len(r.Steps)), orDash(r.PushedBy), textout.Time(r.CreatedAt)})
			}
			return textout.Table(g.stdout, []string{"VERSION", "NAME", "DIGEST", "IMAGES", "MIGRATIONS", "FLAGS", "STEPS", "PUSHED-BY", "CREATED"}, rows)
		},
	}
}

func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return orDash(d)
}

func newReleaseShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show VERSION",
		Short: "Show a pushed release: images, migrations, flags, tiers and steps",
		Long: `Show what a pushed release holds: its image references, migrations (version and
name), default feature flags, per-tier values and step templates (with what
each does on a rollback), who pushed it and which keys signed it, and
whether it still verifies against the control plane's trust root (after the
release key is replaced, older releases no longer do and cannot be rolled
out).`,
		Example: `  attache release show 1.4.0
  attache release show 1.4.0 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.GetRelease(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, r)
			}
			return g.printRelease(r)
		},
	}
}

func (g *globals) printRelease(r apiclient.Release) error {
	verified := "-"
	if r.Verified != nil {
		verified = "yes: signed by a release key the trust root lists"
		if !*r.Verified {
			verified = "NO: " + textout.Clean(r.VerifyError)
		}
	}
	kv := [][2]string{
		{"Release", r.Name + "@" + r.Version},
		{"Digest", r.Digest},
		{"Pushed", textout.Time(r.CreatedAt) + " by " + orDash(r.PushedBy)},
		{"Signed by", orDash(strings.Join(r.SigningKeys, ", "))},
		{"Verifies", verified},
		{"Flags", formatLabels(r.Flags)},
	}
	if r.ManifestsBytes > 0 {
		kv = append(kv, [2]string{"Manifests", fmt.Sprintf("%d bytes", r.ManifestsBytes)})
	}
	if err := fields(g.stdout, kv); err != nil {
		return err
	}
	if len(r.Images) > 0 {
		rows := make([][]string, 0, len(r.Images))
		for _, k := range slices.Sorted(maps.Keys(r.Images)) {
			rows = append(rows, []string{k, r.Images[k]})
		}
		fmt.Fprintln(g.stdout, "\nImages:")
		if err := textout.Table(g.stdout, []string{"NAME", "REFERENCE"}, rows); err != nil {
			return err
		}
	}
	if len(r.Migrations) > 0 {
		rows := make([][]string, 0, len(r.Migrations))
		for _, m := range r.Migrations {
			rows = append(rows, []string{strconv.FormatInt(m.Version, 10), m.Name})
		}
		fmt.Fprintln(g.stdout, "\nMigrations:")
		if err := textout.Table(g.stdout, []string{"VERSION", "NAME"}, rows); err != nil {
			return err
		}
	}
	if len(r.Tiers) > 0 {
		rows := make([][]string, 0, len(r.Tiers))
		for _, tier := range release.AllTiers {
			if vals, ok := r.Tiers[tier]; ok {
				rows = append(rows, []string{tier, formatLabels(vals)})
			}
		}
		fmt.Fprintln(g.stdout, "\nTier values:")
		if err := textout.Table(g.stdout, []string{"TIER", "VALUES"}, rows); err != nil {
			return err
		}
	}
	rows := make([][]string, 0, len(r.Steps))
	for _, s := range r.Steps {
		rows = append(rows, []string{s.ID, s.Provider + "/" + s.Action, cell(s.Resource), orDash(strings.Join(s.DependsOn, ",")), s.OnRollback})
	}
	fmt.Fprintln(g.stdout, "\nSteps:")
	return textout.Table(g.stdout, []string{"STEP", "ACTION", "RESOURCE", "DEPENDS-ON", "ON-ROLLBACK"}, rows)
}
