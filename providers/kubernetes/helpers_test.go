package kubernetes_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/kubernetes"
	"attache.dev/attache/providers/kubernetes/rbac"
	"attache.dev/attache/providers/sdk"
	"attache.dev/attache/testenv/kubetest"
	"google.golang.org/protobuf/types/known/structpb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// shared is one test cluster for the package's tests and benchmarks, with
// the agent's RBAC (rbac.Manifest) applied; the first test that needs it
// starts it and TestMain stops it.
var shared struct {
	once    sync.Once
	cluster *kubetest.Cluster
	dir     string // kubeconfigs written for the tests
	err     error

	agentOnce sync.Once
	agentCfg  *rest.Config
	agentKC   string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cluster != nil {
		if err := shared.cluster.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop test cluster: %v\n", err)
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// cluster returns the shared test cluster, failing tb if it cannot start
// (for instance because its binaries are missing: never a skip).
func cluster(tb testing.TB) *kubetest.Cluster {
	tb.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		shared.cluster, shared.err = kubetest.StartProcess(ctx, kubetest.Options{})
		if shared.err != nil {
			return
		}
		if shared.dir, shared.err = os.MkdirTemp("", "attache-k8s-test-"); shared.err != nil {
			return
		}
		shared.err = applyObjects(ctx, shared.cluster.Config, mustRBAC())
	})
	if shared.err != nil {
		tb.Fatalf("test cluster: %v", shared.err)
	}
	return shared.cluster
}

// mustRBAC decodes the agent's RBAC manifest.
func mustRBAC() []*unstructured.Unstructured {
	objs, err := rbac.Objects()
	if err != nil {
		panic(err)
	}
	return objs
}

// applyObjects server-side-applies objs with cfg (the test's own field
// manager).
func applyObjects(ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cs, err := clientset.NewForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	for _, o := range objs {
		m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		if _, err := r.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "kubetest", Force: true}); err != nil {
			return fmt.Errorf("apply %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}

// agent returns the agent ServiceAccount's config and a kubeconfig file for
// it (one token for the whole test binary).
func agent(t testing.TB) (*rest.Config, string) {
	t.Helper()
	c := cluster(t)
	shared.agentOnce.Do(func() {
		shared.agentCfg = c.ServiceAccountConfig(t, rbac.Namespace, rbac.ServiceAccount)
		shared.agentKC = filepath.Join(shared.dir, "agent.kubeconfig")
		if err := kubetest.WriteKubeconfig(shared.agentKC, shared.agentCfg); err != nil {
			t.Fatal(err)
		}
	})
	if shared.agentCfg == nil {
		t.Fatal("no agent config (an earlier test failed to make it)")
	}
	return shared.agentCfg, shared.agentKC
}

// admin is a clientset with cluster-admin rights.
func admin(t testing.TB) clientset.Interface { return cluster(t).Client(t) }

// adminDynamic is a dynamic client with cluster-admin rights.
func adminDynamic(t testing.TB) dynamic.Interface {
	d, err := dynamic.NewForConfig(cluster(t).Config)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// prefixes hands out distinct namespace prefixes: the tests share a
// cluster.
var prefixes atomic.Int64

// env is one test's configuration: its own namespace prefix and secrets
// directory.
type env struct {
	cfg     kubernetes.Config
	secrets string
	prefix  string
}

// newEnv makes a configuration with an admin kubeconfig; asAgent makes it
// use the agent's ServiceAccount instead. Namespaces with its prefix are
// deleted when the test ends.
func newEnv(t testing.TB, asAgent bool) *env {
	t.Helper()
	c := cluster(t)
	e := &env{secrets: filepath.Join(t.TempDir(), "secrets"), prefix: fmt.Sprintf("t%d-", prefixes.Add(1))}
	if err := os.Mkdir(e.secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	kc := c.Kubeconfig
	if asAgent {
		_, kc = agent(t)
	}
	e.cfg = kubernetes.Config{Kubeconfig: kc, NamespacePrefix: e.prefix, SecretsDir: e.secrets}
	t.Cleanup(func() { deleteNamespaces(c, e.prefix) })
	return e
}

// deleteNamespaces deletes (without waiting) the namespaces with prefix.
func deleteNamespaces(c *kubetest.Cluster, prefix string) {
	cs, err := clientset.NewForConfig(c.Config)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, ns := range list.Items {
		if strings.HasPrefix(ns.Name, prefix) {
			_ = cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		}
	}
}

// writeSecret writes a file into the secrets directory.
func (e *env) writeSecret(t testing.TB, name, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.secrets, name), []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ns is tenant's namespace.
func (e *env) ns(tenant string) string { return e.prefix + tenant }

// configJSON is e's configuration as ConfigureRequest JSON.
func (e *env) configJSON(t testing.TB) []byte {
	t.Helper()
	b, err := sdk.ConfigJSON(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// provider returns a provider configured with e's configuration, logging
// to log (nil: discarded unless -v and K8S_PROVIDER_LOG are set).
func (e *env) provider(t testing.TB, log *slog.Logger) *kubernetes.Provider {
	t.Helper()
	if log == nil {
		log = quiet()
	}
	p := kubernetes.New(log, "test")
	configure(t, p, e.configJSON(t))
	return p
}

func quiet() *slog.Logger {
	if testing.Verbose() && os.Getenv("K8S_PROVIDER_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func configure(t testing.TB, p sdk.Provider, cfg []byte) {
	t.Helper()
	err := p.Configure(t.Context(), &providerv1.ConfigureRequest{
		ConfigJson: cfg,
		Tenant:     &providerv1.TenantContext{Tenant: "acme", AgentId: "spiffe://example.org/tenant/acme/agent/a1", TrustDomain: "example.org"},
	})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
}

// step builds a step; params is converted with structpb.NewStruct.
func step(id, action, tenant string, params map[string]any) *providerv1.Step {
	s, err := structpb.NewStruct(params)
	if err != nil {
		panic(err)
	}
	return &providerv1.Step{Id: id, Action: action, Resource: tenant, Params: s, Tenant: tenant, PlanId: "plan-test", Attempt: 1}
}

// apply applies s and fails the test on an error (not on FAILED).
func apply(t testing.TB, p sdk.Provider, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res, err := p.Apply(t.Context(), s, func(pr *providerv1.Progress) { t.Logf("progress %s: %s", pr.GetResource(), pr.GetMessage()) })
	if err != nil {
		t.Fatalf("Apply %s (%s): %v", s.GetId(), s.GetAction(), err)
	}
	return res
}

// mustApply applies s and fails the test unless it succeeded.
func mustApply(t testing.TB, p sdk.Provider, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res := apply(t, p, s)
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("Apply %s (%s): %s: %s", s.GetId(), s.GetAction(), res.GetState(), res.GetMessage())
	}
	return res
}

// mustPlan plans s and fails the test on an error.
func mustPlan(t testing.TB, p sdk.Provider, s *providerv1.Step) []*providerv1.Change {
	t.Helper()
	cs, err := p.Plan(t.Context(), s)
	if err != nil {
		t.Fatalf("Plan %s (%s): %v", s.GetId(), s.GetAction(), err)
	}
	return cs
}

// output returns a result output as a string.
func output(res *providerv1.ApplyResult, key string) string {
	v := res.GetOutputs().GetFields()[key]
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue
	case *structpb.Value_NumberValue:
		return fmt.Sprint(k.NumberValue)
	case *structpb.Value_BoolValue:
		return fmt.Sprint(k.BoolValue)
	}
	return ""
}

// ops renders changes as "OP resource" lines, sorted, for comparisons.
func ops(cs []*providerv1.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, strings.TrimPrefix(c.GetOperation().String(), "OPERATION_")+" "+c.GetResource())
	}
	sort.Strings(out)
	return out
}

// countOps counts changes by operation name (CREATE, UPDATE, ...).
func countOps(cs []*providerv1.Change) map[string]int {
	n := map[string]int{}
	for _, c := range cs {
		n[strings.TrimPrefix(c.GetOperation().String(), "OPERATION_")]++
	}
	return n
}

// allNoop reports whether every change is a NOOP.
func allNoop(cs []*providerv1.Change) bool {
	for _, c := range cs {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			return false
		}
	}
	return true
}

// describe renders changes for failure messages.
func describe(cs []*providerv1.Change) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "\n  %s %s: %s", c.GetOperation(), c.GetResource(), c.GetSummary())
	}
	return b.String()
}

// eventually polls cond every 100ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last error: %v)", what, d, lastErr)
}

// image is a digest-pinned image reference for repo, its digest derived
// from seed.
func image(repo, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return repo + "@sha256:" + hex.EncodeToString(sum[:])
}

// neverReady is an image whose Pods never become Ready (kubetest's kwok
// stage).
func neverReady(seed string) string {
	return image("registry.example/web-"+kubetest.NeverReadyImage, seed)
}

// webManifests is a release: a Deployment web (replicas, image), a Service
// and, if withConfig, a ConfigMap. The pods meet the restricted Pod
// Security Standard and request 100m CPU and 64Mi memory each.
func webManifests(replicas int, img string, withConfig bool) string {
	m := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: %d
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: web
          image: %s
          ports: [{containerPort: 8080}]
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 200m, memory: 128Mi}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`, replicas, img)
	if withConfig {
		m += `---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  LOG_LEVEL: info
`
	}
	return m
}

// waitAvailable waits until deployment name in ns has all replicas
// available.
func waitAvailable(t testing.TB, ns, name string) {
	t.Helper()
	cs := admin(t)
	eventually(t, 60*time.Second, "deployment "+ns+"/"+name+" available", func() (bool, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		return d.Status.ObservedGeneration >= d.Generation && d.Status.AvailableReplicas == want && d.Status.UpdatedReplicas == want, nil
	})
}

// snapshotKinds are what a conformance snapshot lists in each namespace.
var snapshotKinds = []schema.GroupVersionResource{
	{Version: "v1", Resource: "configmaps"},
	{Version: "v1", Resource: "secrets"},
	{Version: "v1", Resource: "serviceaccounts"},
	{Version: "v1", Resource: "services"},
	{Version: "v1", Resource: "resourcequotas"},
	{Version: "v1", Resource: "limitranges"},
	{Group: "apps", Version: "v1", Resource: "deployments"},
	{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

// snapshot is a deterministic picture of e's namespaces and what the
// provider manages in them, leaving out what changes by itself (status,
// resource versions, managed fields, the objects controllers add to every
// namespace, Pods and ReplicaSets).
func (e *env) snapshot(t *testing.T) []byte {
	t.Helper()
	dyn := adminDynamic(t)
	ctx := t.Context()
	nss, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, ns := range nss.Items {
		if !strings.HasPrefix(ns.GetName(), e.prefix) {
			continue
		}
		fmt.Fprintf(&b, "namespace %s %s\n", ns.GetName(), clean(&ns))
		for _, gvr := range snapshotKinds {
			list, err := dyn.Resource(gvr).Namespace(ns.GetName()).List(ctx, metav1.ListOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range list.Items {
				if o.GetName() == "kube-root-ca.crt" || (gvr.Resource == "serviceaccounts" && o.GetName() == "default") {
					continue
				}
				fmt.Fprintf(&b, "  %s %s %s\n", gvr.Resource, o.GetName(), clean(&o))
			}
		}
	}
	return b.Bytes()
}

// clean renders o without what changes by itself.
func clean(o *unstructured.Unstructured) string {
	c := o.DeepCopy()
	for _, f := range []string{"managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"} {
		unstructured.RemoveNestedField(c.Object, "metadata", f)
	}
	unstructured.RemoveNestedField(c.Object, "metadata", "annotations", "deployment.kubernetes.io/revision")
	unstructured.RemoveNestedField(c.Object, "status")
	b, _ := json.Marshal(c.Object)
	return string(b)
}
