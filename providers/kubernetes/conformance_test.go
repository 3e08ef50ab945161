package kubernetes_test

import (
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/providertest"
	"attache.dev/attache/providers/sdk"
)

// conformanceCases are the providertest cases, one per action.
func conformanceCases() []providertest.Case {
	prov := func(id string, extra map[string]any) *providerv1.Step {
		return step(id, "namespace.provision", "acme", provisionParams(extra))
	}
	manifests := func(id string, extra map[string]any) *providerv1.Step {
		p := map[string]any{"manifests": webManifests(2, image("registry.example/web", "v1"), true)}
		for k, v := range extra {
			p[k] = v
		}
		return step(id, "manifests.apply", "acme", p)
	}
	upgradeStep := func(id string, extra map[string]any) *providerv1.Step {
		p := map[string]any{"deployment": "web", "images": map[string]any{"web": image("registry.example/web", "v2")}, "progress_deadline": "60s"}
		for k, v := range extra {
			p[k] = v
		}
		return step(id, "deployment.upgrade", "acme", p)
	}
	erase := func(id string, extra map[string]any) *providerv1.Step {
		p := map[string]any{"confirm": "acme"}
		for k, v := range extra {
			p[k] = v
		}
		return step(id, "namespace.erase", "acme", p)
	}
	setup := []*providerv1.Step{prov("setup", nil), manifests("setup-manifests", nil)}
	return []providertest.Case{
		{
			Name: "namespace.provision",
			Step: prov("prov", nil),
			Bad: []providertest.BadStep{
				{Name: "unknown tier", Field: "params.tier", Step: prov("b", map[string]any{"tier": "gold"})},
				{Name: "reserved label", Field: "params.labels.attache.dev/tenant", Step: prov("b", map[string]any{"labels": map[string]any{"attache.dev/tenant": "beta"}})},
				{Name: "managed-by label", Field: "params.labels.app.kubernetes.io/managed-by", Step: prov("b", map[string]any{"labels": map[string]any{"app.kubernetes.io/managed-by": "me"}})},
				{Name: "label value", Field: "params.labels.team", Step: prov("b", map[string]any{"labels": map[string]any{"team": "no spaces"}})},
				{Name: "label not a string", Field: "params.labels.team", Step: prov("b", map[string]any{"labels": map[string]any{"team": 3.0}})},
				{Name: "cidr and labels", Field: "params.ingress[0].cidr", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.0/8", "from_namespace_labels": map[string]any{"a": "b"}}}})},
				{Name: "bad cidr", Field: "params.ingress[0].cidr", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.1/8"}}})},
				{Name: "no source", Field: "params.ingress[0].from_namespace_labels", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"ports": []any{80.0}}}})},
				{Name: "port", Field: "params.ingress[1].ports[0]", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.0/8"}, map[string]any{"cidr": "10.0.0.0/8", "ports": []any{70000.0}}}})},
				{Name: "ports not a list", Field: "params.ingress[0].ports", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.0/8", "ports": "80"}}})},
				{Name: "labels not an object", Field: "params.labels", Step: prov("b", map[string]any{"labels": "team=x"})},
				{Name: "duplicate ingress name", Field: "params.ingress[1].name", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"name": "x", "cidr": "10.0.0.0/8"}, map[string]any{"name": "x", "cidr": "10.0.0.0/8"}}})},
				{Name: "ingress unknown key", Field: "params.ingress[0].to", Step: prov("b", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.0/8", "to": "x"}}})},
				{Name: "secret escapes", Field: "params.secrets[0].data.password", Step: prov("b", map[string]any{"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "../db.pw"}}}})},
				{Name: "secret file missing", Field: "params.secrets[0].data.password", Step: prov("b", map[string]any{"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "nope.pw"}}}})},
				{Name: "secret key", Field: "params.secrets[0].data.a b", Step: prov("b", map[string]any{"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"a b": "db.pw"}}}})},
				{Name: "secret name", Field: "params.secrets[0].name", Step: prov("b", map[string]any{"secrets": []any{map[string]any{"name": "DB", "data": map[string]any{"password": "db.pw"}}}})},
				{Name: "service account", Field: "params.service_account", Step: prov("b", map[string]any{"service_account": "App_1"})},
				{Name: "tenant param", Field: "params.tenant", Step: prov("b", map[string]any{"tenant": "Beta"})},
				{Name: "tenant too long", Field: "params.tenant", Step: prov("b", map[string]any{"tenant": strings.Repeat("a", 62)})},
				{Name: "unknown param", Field: "params.colour", Step: prov("b", map[string]any{"colour": "red"})},
				{Name: "step tenant", Field: "tenant", Step: step("b", "namespace.provision", "Not_A_Label", nil)},
				{Name: "action", Field: "action", Step: step("b", "namespace.explode", "acme", nil)},
			},
		},
		{
			Name:  "manifests.apply",
			Setup: setup[:1],
			Step:  manifests("apply", nil),
			Bad: []providertest.BadStep{
				{Name: "no manifests", Field: "params.manifests", Step: step("b", "manifests.apply", "acme", nil)},
				{Name: "not yaml", Field: "params.manifests", Step: manifests("b", map[string]any{"manifests": "kind: [unclosed"})},
				{Name: "no name", Field: "params.manifests", Step: manifests("b", map[string]any{"manifests": "apiVersion: v1\nkind: ConfigMap\n"})},
				{Name: "cluster-scoped", Field: "params.manifests", Step: manifests("b", map[string]any{"manifests": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n"})},
				{Name: "namespace", Field: "params.manifests", Step: manifests("b", map[string]any{"manifests": "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"})},
				{Name: "other namespace", Field: "params.manifests", Step: manifests("b", map[string]any{"manifests": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: kube-system}\n"})},
				{Name: "set", Field: "params.set", Step: manifests("b", map[string]any{"set": "App"})},
			},
		},
		{
			Name:  "deployment.upgrade",
			Setup: setup,
			Step:  upgradeStep("upgrade", nil),
			Bad: []providertest.BadStep{
				{Name: "no images", Field: "params.images", Step: step("b", "deployment.upgrade", "acme", map[string]any{"deployment": "web"})},
				{Name: "no deployment", Field: "params.deployment", Step: step("b", "deployment.upgrade", "acme", map[string]any{"images": map[string]any{"web": image("r", "x")}})},
				{Name: "no digest", Field: "params.images.web", Step: upgradeStep("b", map[string]any{"images": map[string]any{"web": "registry.example/web:latest"}})},
				{Name: "deadline", Field: "params.progress_deadline", Step: upgradeStep("b", map[string]any{"progress_deadline": "5s"})},
				{Name: "probe port", Field: "params.probe.port", Step: upgradeStep("b", map[string]any{"probe": map[string]any{"port": 0.0, "path": "/healthz"}})},
				{Name: "probe key", Field: "params.probe.colour", Step: upgradeStep("b", map[string]any{"probe": map[string]any{"port": 80.0, "colour": "red"}})},
				{Name: "images not an object", Field: "params.images", Step: upgradeStep("b", map[string]any{"images": "web=x"})},
				{Name: "probe not an object", Field: "params.probe", Step: upgradeStep("b", map[string]any{"probe": 80.0})},
				{Name: "deployment name", Field: "params.deployment", Step: upgradeStep("b", map[string]any{"deployment": "Web!"})},
			},
			Slow: upgradeStep("slow", map[string]any{"images": map[string]any{"web": neverReady("slow")}}),
		},
		{
			Name:  "namespace.erase",
			Setup: setup,
			Step:  erase("erase", nil),
			Bad: []providertest.BadStep{
				{Name: "no confirm", Field: "params.confirm", Step: step("b", "namespace.erase", "acme", nil)},
				{Name: "wrong confirm", Field: "params.confirm", Step: erase("b", map[string]any{"confirm": "beta"})},
				{Name: "timeout", Field: "params.timeout", Step: erase("b", map[string]any{"timeout": "2h"})},
			},
		},
	}
}

// conformanceEnv is a fixture's configuration, with the secret files the
// cases name.
func conformanceEnv(t *testing.T, asAgent bool) *env {
	e := newEnv(t, asAgent)
	e.writeSecret(t, "db.pw", "pw-acme-0123456789")
	e.writeSecret(t, "db.user", "app")
	return e
}

// TestConformanceInProcess runs the providertest suite against the provider
// served in-process over real gRPC, as cluster-admin.
func TestConformanceInProcess(t *testing.T) {
	t.Parallel()
	cluster(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		t.Parallel() // each fixture has its own namespace prefix
		e := conformanceEnv(t, false)
		ip, err := sdk.ServeInProcess(e.provider(t, nil))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ip.Close() })
		return providertest.Fixture{Provider: ip, Snapshot: e.snapshot}
	}, conformanceCases())
}

// TestConformanceThroughPlugin runs the suite against the provider binary,
// started through go-plugin as the agent runs it, acting as the agent's
// ServiceAccount (rbac.Manifest's rights only).
func TestConformanceThroughPlugin(t *testing.T) {
	t.Parallel()
	cluster(t)
	pluginBinary(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		t.Parallel()
		e := conformanceEnv(t, true)
		return providertest.Fixture{Provider: startPlugin(t, e), Snapshot: e.snapshot}
	}, conformanceCases())
}
