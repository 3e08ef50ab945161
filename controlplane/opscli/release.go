package opscli

import "github.com/spf13/cobra"

func newReleaseCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Create the release key, and sign and verify release documents",
		Long: `A release says what may run: its version, images pinned by digest, manifests,
migrations, default feature flags, per-tier values and the step templates
that the control plane renders into each tenant's plans. The vendor signs it
with its release key, which lives outside the control plane (in the
vendor's CI); agents check that signature as well as the control plane's,
and run a plan only if it is exactly what the signed release renders.

Once: create the release key with "attache release keygen" and have the
control plane's trust root list it ("attache-controlplane keys
trust-release-key --public-key release.key.pub"). Then, for every release:
"attache release sign" in CI. keygen, sign and verify work offline.

  name: sampleapp                   # product, a lowercase DNS label
  version: 1.4.0
  images:                           # optional: pinned by digest
    web: registry.example.com/sampleapp@sha256:<64 hex>
  manifests: |                      # optional: rendered Kubernetes manifests
    ...
  migrations:                       # optional: strictly increasing versions
    - {version: 1, name: create_accounts, sql: "CREATE TABLE ..."}
  flags: {checkout_v2: "false"}     # optional: default feature flags
  tiers:                            # optional: pool, bridge, silo, byoc
    pool: {replicas: "2"}
  steps:                            # plan steps, as in "attache plan"
    - id: app
      provider: local
      action: app.upgrade
      resource: "tenants/{{tenant}}/app"
      params:
        image: "{{images.web}}"     # also {{tenant}} {{tier}} {{name}}
        replicas: "{{values.replicas}}"  # {{version}}: anywhere in a string
        flags: "{{flags}}"          # whole value only, as are {{migrations}},
                                    # {{manifests}} and {{images}}
      depends_on: []
      compensation: {action: app.rollback, params: {}}
      on_rollback: run              # or skip (e.g. migrations)`,
		Example: `  attache release keygen --out release.key
  attache release sign --key release.key release.yaml --out release.signed.json
  attache release verify --root root.json release.signed.json`,
	}
	cmd.AddCommand(newReleaseKeygenCommand(g), newReleaseSignCommand(g), newReleaseVerifyCommand(g))
	cmd.AddCommand(releaseServerCmds(g)...) // push, list, show: release_push.go
	cmd.AddCommand(releaseServerCmds(g)...)
	return cmd
}
