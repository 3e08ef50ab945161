package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestServiceAccountRBAC: a ServiceAccount token can do only what RBAC
// grants, and a kubeconfig written for it authenticates the same way.
func TestServiceAccountRBAC(t *testing.T) {
	c := sharedCluster(t)
	admin := c.Client(t)
	ctx := context.Background()
	ns := createNamespace(t, admin, "rbac")

	cfg := c.ServiceAccountConfig(t, ns, "agent")
	if cfg.BearerToken == "" || len(cfg.CertData) > 0 || len(cfg.KeyData) > 0 || cfg.CertFile != "" || len(cfg.CAData) == 0 {
		t.Fatalf("ServiceAccountConfig: want a bearer token and the CA only, got token %v cert %v key %v CA %v",
			cfg.BearerToken != "", len(cfg.CertData) > 0, len(cfg.KeyData) > 0, len(cfg.CAData) > 0)
	}
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantUser := "system:serviceaccount:" + ns + ":agent"
	if u := whoAmI(t, sa); u != wantUser {
		t.Errorf("ServiceAccountConfig authenticates as %q, want %q", u, wantUser)
	}

	// No bindings: Forbidden, in kube-system and in its own namespace.
	for _, where := range []string{"kube-system", ns} {
		_, err := sa.CoreV1().Secrets(where).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("list secrets in %s without bindings: %v, want Forbidden", where, err)
		}
	}

	// A Role in its namespace opens that namespace only.
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "secrets-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "secrets-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "agent"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "RoleBinding effective", func() (bool, string) {
		_, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		return err == nil, errString(err)
	})
	if _, err := sa.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets in kube-system with a Role in %s: %v, want Forbidden", ns, err)
	}

	// The same identity through a kubeconfig file, as a plugin would read it.
	path := filepath.Join(t.TempDir(), "agent.kubeconfig")
	if err := WriteKubeconfig(path, cfg); err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if len(kc.CertData) > 0 || kc.BearerToken == "" {
		t.Errorf("kubeconfig: want a token and no client certificate")
	}
	fromFile, err := kubernetes.NewForConfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	if u := whoAmI(t, fromFile); u != wantUser {
		t.Errorf("kubeconfig authenticates as %q, want %q", u, wantUser)
	}
}

// TestValidatingAdmissionPolicy: the admission chain runs
// ValidatingAdmissionPolicies (the provider's guard relies on them).
func TestValidatingAdmissionPolicy(t *testing.T) {
	c := sharedCluster(t)
	admin := c.Client(t)
	ctx := context.Background()
	ns := createNamespace(t, admin, "vap")

	fail := admissionregistrationv1.Fail
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "kubetest-no-forbidden-key"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
					RuleWithOperations: admissionregistrationv1.RuleWithOperations{
						Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
						Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
					},
				}},
			},
			Validations: []admissionregistrationv1.Validation{{
				Expression: `!has(object.data) || !("forbidden" in object.data)`,
				Message:    "kubetest: key forbidden is not allowed",
			}},
		},
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	})
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubetest-no-forbidden-key"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy.Name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			},
		},
	}
	if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})

	waitFor(t, 30*time.Second, "policy enforced", func() (bool, string) {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "cm-"}, Data: map[string]string{"forbidden": "1"}}
		_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		return err != nil && strings.Contains(err.Error(), "key forbidden is not allowed"), errString(err)
	})
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "allowed"}, Data: map[string]string{"fine": "1"},
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("allowed ConfigMap refused: %v", err)
	}
}

func TestWriteKubeconfig(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, []byte("CA FROM FILE"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     *rest.Config
		check   func(t *testing.T, got *rest.Config)
		wantErr string
	}{
		{
			name: "token",
			cfg:  &rest.Config{Host: "https://127.0.0.1:1", BearerToken: "tok", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("CA")}},
			check: func(t *testing.T, got *rest.Config) {
				if got.Host != "https://127.0.0.1:1" || got.BearerToken != "tok" || string(got.CAData) != "CA" || len(got.CertData) > 0 {
					t.Errorf("got host %q token %q CA %q cert %q", got.Host, got.BearerToken, got.CAData, got.CertData)
				}
			},
		},
		{
			name: "client certificate, CA from file",
			cfg:  &rest.Config{Host: "https://127.0.0.1:2", TLSClientConfig: rest.TLSClientConfig{CAFile: caFile, CertData: []byte("CERT"), KeyData: []byte("KEY")}},
			check: func(t *testing.T, got *rest.Config) {
				if string(got.CertData) != "CERT" || string(got.KeyData) != "KEY" || string(got.CAData) != "CA FROM FILE" || got.BearerToken != "" {
					t.Errorf("got cert %q key %q CA %q token %q", got.CertData, got.KeyData, got.CAData, got.BearerToken)
				}
			},
		},
		{name: "no credentials", cfg: &rest.Config{Host: "https://127.0.0.1:3"}, wantErr: "neither a bearer token nor a client certificate"},
		{name: "no host", cfg: &rest.Config{BearerToken: "tok"}, wantErr: "without host"},
		{name: "missing CA file", cfg: &rest.Config{Host: "https://h", BearerToken: "t", TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(dir, "nope")}}, wantErr: "CA file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kubeconfig")
			// An existing world-readable file is replaced by a private one.
			if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := WriteKubeconfig(path, tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			got, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, got)
		})
	}
}

func whoAmI(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	return r.Status.UserInfo.Username
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
