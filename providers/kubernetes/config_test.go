package kubernetes_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/kubernetes"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestConfigValidate(t *testing.T) {
	goodTier := kubernetes.Tier{Quota: map[string]string{"requests.cpu": "1"}, Limits: kubernetes.Limits{
		DefaultCPU: "500m", DefaultMemory: "256Mi", DefaultRequestCPU: "100m", DefaultRequestMemory: "64Mi"}}
	tests := []struct {
		name   string
		cfg    kubernetes.Config
		fields []string // violations wanted, sorted
	}{
		{"defaults", kubernetes.Config{}, nil},
		{"full", kubernetes.Config{Kubeconfig: "/etc/kube/config", Context: "prod", NamespacePrefix: "acme-", SecretsDir: "/run/secrets",
			AgentServiceAccount: "ops/agent", AgentClusterRole: "agent-tenant", PodSecurity: "baseline", QPS: 50, Burst: 100, Timeout: "10s",
			Tiers: map[string]kubernetes.Tier{"gold": goodTier}}, nil},
		{"relative paths", kubernetes.Config{Kubeconfig: "kube/config", SecretsDir: "secrets"}, []string{"config.kubeconfig", "config.secrets_dir"}},
		{"context without kubeconfig", kubernetes.Config{Context: "prod"}, []string{"config.context"}},
		{"prefix", kubernetes.Config{NamespacePrefix: "Tenant_"}, []string{"config.namespace_prefix"}},
		{"agent", kubernetes.Config{AgentServiceAccount: "attache-agent", AgentClusterRole: "Bad Role"}, []string{"config.agent_cluster_role", "config.agent_service_account"}},
		{"pod security", kubernetes.Config{PodSecurity: "strict"}, []string{"config.pod_security"}},
		{"rates", kubernetes.Config{QPS: -1, Burst: -2, Timeout: "soon"}, []string{"config.burst", "config.qps", "config.timeout"}},
		{"tier", kubernetes.Config{Tiers: map[string]kubernetes.Tier{
			"gold": {Quota: map[string]string{"requests.cpu": "lots"}, Limits: kubernetes.Limits{DefaultCPU: "100m", DefaultMemory: "1Gi", DefaultRequestCPU: "200m"}},
			"Bad":  goodTier,
		}}, []string{"config.tiers", "config.tiers.gold.limits.default_request_cpu", "config.tiers.gold.limits.default_request_memory", "config.tiers.gold.quota.requests.cpu"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var got []string
			if err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					f, _, _ := strings.Cut(line, ": ")
					got = append(got, f)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.fields) {
				t.Errorf("fields %v, want %v (error: %v)", got, tt.fields, err)
			}
		})
	}
}

func TestConfigure(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.kubeconfig")
	if err := os.WriteFile(open, []byte("apiVersion: v1\nkind: Config\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, cfg, field, want string
	}{
		{"unknown key", `{"kubeconfg": "/x"}`, "config", "unknown field"},
		{"missing file", `{"kubeconfig": "` + filepath.Join(dir, "none") + `"}`, "config.kubeconfig", "no such file"},
		{"readable by others", `{"kubeconfig": "` + open + `"}`, "config.kubeconfig", "mode 0644"},
		{"in-cluster outside a cluster", `{}`, "config.kubeconfig", "in-cluster configuration is not available"},
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // as outside a cluster, wherever the test runs
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := kubernetes.New(quiet(), "test")
			err := p.Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: []byte(tt.cfg)})
			v := sdk.Violations(err)
			if status.Code(err) != codes.InvalidArgument || len(v) == 0 || v[0].Field != tt.field || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v (%v), want %s: …%s…", err, v, tt.field, tt.want)
			}
		})
	}

	p := kubernetes.New(quiet(), "test")
	if _, err := p.Plan(t.Context(), step("p", "namespace.provision", "acme", nil)); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Plan before Configure: %v", err)
	}
	h, err := p.Health(t.Context())
	if err != nil || h.GetComponents()[0].GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY {
		t.Errorf("Health before Configure: %v %v", h, err)
	}
	d, err := p.Describe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range d.GetActions() {
		names = append(names, a.GetName())
	}
	if want := []string{"deployment.upgrade", "manifests.apply", "namespace.erase", "namespace.provision"}; !slices.Equal(names, want) {
		t.Errorf("actions %v, want %v", names, want)
	}
}

// An API server that cannot be reached does not fail Configure; Health
// reports it and actions fail with Unavailable.
func TestUnreachable(t *testing.T) {
	e := &env{prefix: "u-"}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfg = kubernetes.Config{Kubeconfig: kc, Timeout: "2s"}
	p := e.provider(t, nil)
	h, err := p.Health(t.Context())
	if err != nil || h.GetComponents()[0].GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || strings.Contains(h.GetComponents()[0].GetMessage(), "not-a-real-token") {
		t.Errorf("Health: %v %v", h, err)
	}
	_, err = p.Apply(t.Context(), step("p", "namespace.provision", "acme", nil), nil)
	if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "not-a-real-token") {
		t.Errorf("Apply: %v, want Unavailable", err)
	}
}
