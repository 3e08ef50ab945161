package inventory_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/providers/kubernetes/inventory"
	"attache.dev/attache/testenv/kubetest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// The cluster is started on first use (Decode's tests and the fuzz target
// need none) and shared by the tests; each test works in a namespace of its
// own.
var (
	clusterOnce sync.Once
	cluster     *kubetest.Cluster
	clusterErr  error
	namespaces  atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the test cluster:", err)
		}
	}
	os.Exit(code)
}

// testCluster returns the shared cluster, failing the test (never skipping
// it) when it cannot start, e.g. because its binaries are not built.
func testCluster(t testing.TB) *kubetest.Cluster {
	t.Helper()
	clusterOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cluster, clusterErr = kubetest.StartProcess(ctx, kubetest.Options{})
	})
	if clusterErr != nil {
		t.Fatalf("starting the test cluster: %v", clusterErr)
	}
	return cluster
}

func quiet() *slog.Logger {
	if testing.Verbose() && os.Getenv("INVENTORY_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is one test's namespace, an Applier whose requests are counted, and
// an admin client for setting things up and looking.
type env struct {
	ns      string
	labels  map[string]string
	applier *inventory.Applier
	admin   kubernetes.Interface
	dyn     dynamic.Interface
	writes  *atomic.Int64 // requests the Applier made other than GET/HEAD
}

// newEnv creates a fresh namespace and an Applier for it.
func newEnv(t *testing.T) *env {
	t.Helper()
	c := testCluster(t)
	admin := c.Client(t)
	ns := fmt.Sprintf("inv-%d-%d", os.Getpid()%10000, namespaces.Add(1))
	ctx := context.Background()
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})

	writes := &atomic.Int64{}
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 200, 400
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				writes.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	adminDyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		ns:     ns,
		labels: map[string]string{"app.kubernetes.io/managed-by": "attache", "attache.dev/tenant": "acme"},
		applier: &inventory.Applier{
			Dynamic:      dyn,
			Mapper:       restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco)),
			Client:       cs,
			FieldManager: "attache",
			Log:          quiet(),
		},
		admin:  admin,
		dyn:    adminDyn,
		writes: writes,
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// apply decodes manifests and applies them as set, failing the test on an
// error.
func (e *env) apply(t *testing.T, set, manifests string, dryRun bool) []inventory.Change {
	t.Helper()
	objs, err := inventory.Decode([]byte(manifests))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	changes, err := e.applier.Apply(context.Background(), e.ns, set, e.labels, objs, dryRun)
	if err != nil {
		t.Fatalf("Apply(%s, dryRun=%v): %v", set, dryRun, err)
	}
	return changes
}

// ops renders changes as "create v1/ConfigMap ns/cfg" lines, sorted as
// given.
func ops(changes []inventory.Change) []string {
	out := make([]string, len(changes))
	for i, c := range changes {
		out[i] = c.Op.String() + " " + c.Resource
	}
	return out
}

// countOps counts changes by operation.
func countOps(changes []inventory.Change) map[inventory.Op]int {
	m := map[inventory.Op]int{}
	for _, c := range changes {
		m[c.Op]++
	}
	return m
}

// get fetches an object from the namespace with the admin client; nil if it
// does not exist.
func (e *env) get(t *testing.T, apiVersion, kind, name string) *unstructured.Unstructured {
	t.Helper()
	gvr := resources[apiVersion+"/"+kind]
	if gvr.Resource == "" {
		t.Fatalf("no resource for %s/%s in the test table", apiVersion, kind)
	}
	obj, err := e.dyn.Resource(gvr).Namespace(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		t.Fatalf("get %s %s: %v", kind, name, err)
	}
	return obj
}

// eventually polls cond every 100ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
