package upgrade_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"attache.dev/attache/testenv/kubetest"
)

// shared is one test cluster for the package's tests and benchmarks, started
// by the first that needs it and stopped by TestMain.
var shared struct {
	once    sync.Once
	cluster *kubetest.Cluster
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cluster != nil {
		if err := shared.cluster.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop test cluster: %v\n", err)
		}
	}
	os.Exit(code)
}

// cluster returns the shared test cluster, failing tb if it cannot start
// (for instance because its binaries are missing).
func cluster(tb testing.TB) *kubetest.Cluster {
	tb.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		shared.cluster, shared.err = kubetest.StartProcess(ctx, kubetest.Options{})
	})
	if shared.err != nil {
		tb.Fatalf("start test cluster: %v", shared.err)
	}
	return shared.cluster
}

// writes counts the requests that would change something (anything but GET,
// HEAD and watches), so a test can check that an Upgrade wrote nothing.
type writes struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (w *writes) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.n.Add(1)
	}
	return w.next.RoundTrip(r)
}

// env is one test's namespace on the shared cluster and a client for it.
type env struct {
	c      kubernetes.Interface
	ns     string
	writes *atomic.Int64 // requests other than GET and HEAD made through c
	log    *slog.Logger
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	cl := cluster(tb)
	e := &env{writes: new(atomic.Int64)}
	cfg := rest.CopyConfig(cl.Config)
	cfg.QPS, cfg.Burst = 200, 400
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &writes{next: rt, n: e.writes} })
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatalf("client: %v", err)
	}
	e.c = c
	e.log = slog.New(slog.NewTextHandler(testWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(tb.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	e.ns = fmt.Sprintf("up-%s-%d", strings.Trim(name, "-"), time.Now().UnixNano()%1e6)
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create namespace: %v", err)
	}
	tb.Cleanup(func() {
		_ = c.CoreV1().Namespaces().Delete(context.Background(), e.ns, metav1.DeleteOptions{})
	})
	return e
}

// testWriter sends log lines to tb.Log.
type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// image is a digest-pinned reference to repo whose digest is derived from
// seed.
func image(repo, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return repo + "@sha256:" + hex.EncodeToString(sum[:])
}

// neverReadyImage is like image, but kwok keeps Pods running it Running and
// never Ready (see kubetest's package doc), as a failing readiness probe
// would: an upgrade to it alone fails.
func neverReadyImage(repo, seed string) string {
	return image(repo+"-"+kubetest.NeverReadyImage, seed)
}

// deployment creates a Deployment named name with one container "web"
// running img (and one "sidecar") with n replicas, and
// waits until it is available.
func (e *env) deployment(tb testing.TB, name, img string, n int32) *appsv1.Deployment {
	tb.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{
						{Name: "web", Image: img, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
						{Name: "sidecar", Image: image("registry.example.com/acme/sidecar", "1")},
					},
				},
			},
		},
	}
	ctx := context.Background()
	if _, err := e.c.AppsV1().Deployments(e.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create deployment: %v", err)
	}
	return e.awaitAvailable(tb, name)
}

// service creates a Service for the Deployment's pods on port 80 → 8080.
func (e *env) service(tb testing.TB, name string) {
	tb.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := e.c.CoreV1().Services(e.ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create service: %v", err)
	}
}

// awaitAvailable waits until the Deployment's rollout is complete.
func (e *env) awaitAvailable(tb testing.TB, name string) *appsv1.Deployment {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var d *appsv1.Deployment
	for {
		var err error
		d, err = e.c.AppsV1().Deployments(e.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			tb.Fatalf("get deployment: %v", err)
		}
		if complete(d) {
			return d
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("deployment %s/%s not available: %+v", e.ns, name, d.Status)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func complete(d *appsv1.Deployment) bool {
	st, want := d.Status, *d.Spec.Replicas
	return st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.Replicas == want &&
		st.AvailableReplicas == want && st.UnavailableReplicas == 0
}

func (e *env) get(tb testing.TB, name string) *appsv1.Deployment {
	tb.Helper()
	d, err := e.c.AppsV1().Deployments(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		tb.Fatalf("get deployment: %v", err)
	}
	return d
}

// containerImage is the image of container name in d's pod template.
func containerImage(d *appsv1.Deployment, name string) string {
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c.Image
		}
	}
	return ""
}
