// Package kubetest starts a real Kubernetes control plane for tests, in the
// style of controller-runtime's envtest but without envtest, Docker, a
// container runtime or root.
//
// A Cluster is etcd, kube-apiserver, kube-controller-manager, kube-scheduler
// and kwok (which plays the kubelet of fake Nodes, so Pods are scheduled,
// become Ready and Deployments roll out), all on 127.0.0.1 in a temporary
// directory (Cluster.Dir) that holds a fresh CA, the certificates, the
// kubeconfigs, etcd's data and one log file per process. The API server
// serves TLS only, authorizes with Node,RBAC, issues ServiceAccount tokens
// (TokenRequest) and runs the default admission plugins,
// ValidatingAdmissionPolicy and ResourceQuota included. Cluster.Config is
// cluster-admin (a client certificate in system:masters);
// ServiceAccountConfig gives a token with only the permissions RBAC grants
// that ServiceAccount.
//
// Who imports it: tests only — the Kubernetes provider's tests, e2e tests and
// benchmarks. Start gives a test its own cluster (3–5 s to start on two idle
// cores, ~520 MiB resident); packages that share one start it from TestMain
// with StartProcess:
//
//	var cluster *kubetest.Cluster
//
//	func TestMain(m *testing.M) {
//		c, err := kubetest.StartProcess(context.Background(), kubetest.Options{})
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		cluster = c
//		code := m.Run()
//		c.Stop()
//		os.Exit(code)
//	}
//
// # Binaries
//
// The binaries are not in the repository: scripts/k8s-binaries.sh (run by
// make deps-test) builds etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler (v1.36.3) and kwok (v0.8.0) from the Go module proxy into
// $HOME/.cache/attache/k8s/v1.36.3-kwokv0.8.0, with kwok's stage
// configurations under stage/ and a .complete stamp; ATTACHE_K8S_BIN names
// another directory with the same layout. See BinDir. When they are missing,
// Start fails the test: it never skips, so CI cannot silently test nothing.
// setpriv (util-linux) is needed too.
//
// # Process lifetime
//
// Every process runs as `setpriv --pdeathsig KILL -- BINARY ...`, so it dies
// with the test binary even when `go test -timeout` kills it. Stop (run by
// t.Cleanup for Start) sends SIGTERM, then SIGKILL after a few seconds, and
// removes Dir; directories left by killed test binaries are removed by the
// next start.
//
// # Timings
//
// To expect on two cores: a 2-replica Deployment is rolled out in 0.1–0.3 s, 300
// replicas in about 5 s; Stop takes about 1.5 s; deleting a namespace takes
// 5–10 s, because kube-controller-manager's namespace controller waits a
// fixed 5 s before it starts emptying one.
//
// # Fake nodes and Pods that never become Ready
//
// Options.Nodes fake Nodes (default 1) named kwok-node-0, kwok-node-1, ...
// carry the annotation kwok.x-k8s.io/node=fake, no taints, 1000 CPUs, 4 TiB
// of memory and room for 10000 Pods each. kwok runs its "fast" stages: Pods
// bound to a fake Node become Running and Ready at once, Pods being deleted
// are removed at once, Pods of Jobs complete.
//
// To test a rollout that never becomes Ready (an upgrade whose Pods fail
// their readiness probe), give the Pod either
//
//   - the label NeverReadyLabel ("attache.dev/test-never-ready", any value) in
//     the Deployment's spec.template.metadata.labels, or
//   - a container image whose reference contains NeverReadyImage
//     ("test-never-ready"), e.g.
//     "registry.example/web-test-never-ready@sha256:<64 hex>" — the way to make
//     an image-only upgrade fail.
//
// Such Pods become Running but not Ready, as with a failing readiness probe:
// containers running and ready=false, conditions Ready and ContainersReady
// False with reason ContainersNotReady, and a Warning event "Unhealthy". A
// Deployment whose new Pods are like that never becomes Available and, after
// spec.progressDeadlineSeconds, reports Progressing=False with reason
// ProgressDeadlineExceeded. kwok does this with a Stage of ours
// (attache-pod-never-ready) and an extra selector requirement on kwok's
// pod-ready stage.
package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Versions of the binaries BinDir looks for by default.
const (
	KubernetesVersion = "v1.36.3"
	KwokVersion       = "v0.8.0"
)

// Cluster is a running control plane. Stop it when done (Start does that in
// t.Cleanup).
type Cluster struct {
	// Config is cluster-admin: a client certificate in group system:masters,
	// for https://127.0.0.1:<port>, verified against the cluster's own CA.
	Config *rest.Config
	// Dir is the temporary directory with certificates, kubeconfigs, etcd's
	// data and the processes' logs (<name>.log). Stop removes it.
	Dir string
	// Kubeconfig is the path of an admin kubeconfig file (mode 0600) for
	// Config, for processes that read one (plugins, kubectl).
	Kubeconfig string

	opts     Options
	bin      string
	setpriv  string
	pki      *pki
	procs    []*process // in start order
	stopOnce sync.Once
	stopErr  error
}

// Options tune StartProcess. The zero value is a good default.
type Options struct {
	// Nodes is the number of kwok fake Nodes, 1 to 64; 0 means 1.
	Nodes int
	// Log, if set, also receives every process's output, each line prefixed
	// with the process's name. The log files in Dir are written either way.
	Log io.Writer
}

// Timeouts of the start-up phases.
const (
	readyTimeout = 60 * time.Second // each process, and the nodes + default ServiceAccount
	startTimeout = 3 * time.Minute  // all of Start
	stopGrace    = 5 * time.Second  // SIGTERM → SIGKILL
	tokenTTL     = int64(60 * 60)   // ServiceAccountConfig tokens, seconds
	clientQPS    = 1000             // no client-side throttling worth the name
	clientBurst  = 2000
)

// Start starts a fresh cluster and stops it in t.Cleanup. It fails the test
// (never skips) when the binaries or setpriv are missing or the cluster does
// not come up.
func Start(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := StartProcess(ctx, Options{})
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("kubetest: %v", err)
		}
	})
	return c
}

// StartProcess is Start without a testing.TB, for a cluster shared by a
// package's tests (TestMain) or benchmarks; the caller must call Stop. ctx
// bounds the start-up only: the cluster runs until Stop. It returns when
// every fake Node is Ready and schedulable and the default ServiceAccount
// exists in namespace default.
func StartProcess(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 1
	}
	if opts.Nodes < 1 || opts.Nodes > maxNodes {
		return nil, fmt.Errorf("options: nodes %d out of range 1..%d", opts.Nodes, maxNodes)
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	setpriv, err := lookSetpriv()
	if err != nil {
		return nil, err
	}
	removeStale()

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	c := &Cluster{Dir: dir, opts: opts, bin: bin, setpriv: setpriv}
	if err := c.start(ctx); err != nil {
		if serr := c.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	if err := os.WriteFile(filepath.Join(c.Dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write owner.pid: %w", err)
	}
	var err error
	if c.pki, err = newPKI(c.Dir); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcdURL, err := c.startEtcd(ctx)
	if err != nil {
		return err
	}
	if err := c.startAPIServer(ctx, etcdURL); err != nil {
		return err
	}
	if err := c.startControllerManager(); err != nil {
		return err
	}
	if err := c.startScheduler(); err != nil {
		return err
	}
	if err := c.startKwok(ctx); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	if err := createNodes(ctx, cs, c.opts.Nodes); err != nil {
		return err
	}
	return c.waitSettled(ctx, cs)
}

// waitSettled waits until every fake Node is Ready without the not-ready
// taint and the default ServiceAccount exists.
func (c *Cluster) waitSettled(ctx context.Context, cs kubernetes.Interface) error {
	var last string
	err := c.poll(ctx, readyTimeout, func(ctx context.Context) (bool, error) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: nodeTypeLabel + "=" + nodeTypeValue})
		if err != nil {
			last = "list nodes: " + err.Error()
			return false, nil
		}
		ready := 0
		for i := range nodes.Items {
			if nodeSchedulable(&nodes.Items[i]) {
				ready++
			}
		}
		if ready < c.opts.Nodes {
			last = fmt.Sprintf("%d of %d fake nodes Ready and schedulable", ready, c.opts.Nodes)
			return false, nil
		}
		if _, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			last = "ServiceAccount default/default: " + err.Error()
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("cluster not settled (%s): %w", last, err)
	}
	return nil
}

func nodeSchedulable(n *corev1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return false
		}
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// poll calls cond every 100ms until it returns true, an error, a process of
// the cluster exits, ctx ends or timeout passes.
func (c *Cluster) poll(ctx context.Context, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.exited(); err != nil {
			return err
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := cond(cctx)
		ccancel()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not ready after %v: %w", timeout, ctx.Err())
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// exited reports the first process of the cluster that is no longer running,
// with the tail of its log.
func (c *Cluster) exited() error {
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.name, p.waitErr, p.logPath, tail(p.logPath))
		default:
		}
	}
	return nil
}

// Stop stops every process (SIGTERM, then SIGKILL after a few seconds) and
// removes Dir. Calling it again returns the first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	stopAll(c.procs)
	if err := os.RemoveAll(c.Dir); err != nil {
		return fmt.Errorf("remove cluster directory: %w", err)
	}
	return nil
}

// Client returns a clientset for Config (cluster-admin).
func (c *Cluster) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatalf("kubetest: admin client: %v", err)
	}
	return cs
}

// ServiceAccountConfig returns a config that authenticates as ServiceAccount
// namespace/name with a one-hour token from the TokenRequest API, and trusts
// the cluster's CA; it has no client certificate, so it can do exactly what
// RBAC grants the ServiceAccount. The ServiceAccount is created if it does
// not exist; the namespace must exist.
func (c *Cluster) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sas := c.Client(t).CoreV1().ServiceAccounts(namespace)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := sas.Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create ServiceAccount %s/%s: %v", namespace, name, err)
	}
	ttl := tokenTTL
	tr, err := sas.CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for ServiceAccount %s/%s: %v", namespace, name, err)
	}
	return &rest.Config{
		Host:            c.Config.Host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), c.Config.CAData...)},
		QPS:             clientQPS,
		Burst:           clientBurst,
	}
}

// BinDir returns the directory with the cluster's binaries: $ATTACHE_K8S_BIN
// if set, else $HOME/.cache/attache/k8s/<KubernetesVersion>-kwok<KwokVersion>
// once scripts/k8s-binaries.sh has completed it. The error says how to get
// them.
func BinDir() (string, error) {
	const how = "run scripts/k8s-binaries.sh (make deps-test) to build them (about 15 minutes, once per machine)"
	if dir := os.Getenv("ATTACHE_K8S_BIN"); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("ATTACHE_K8S_BIN=%s: %w; unset it and %s", dir, err, how)
		}
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no home directory to find the Kubernetes test binaries in (%w); set ATTACHE_K8S_BIN or %s", err, how)
	}
	dir := filepath.Join(home, ".cache", "attache", "k8s", KubernetesVersion+"-kwok"+KwokVersion)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return "", fmt.Errorf("the Kubernetes test binaries are not in %s (no .complete stamp): %s", dir, how)
	}
	if err := checkBinDir(dir); err != nil {
		return "", fmt.Errorf("the Kubernetes test binaries in %s are incomplete: %w; remove the directory and %s", dir, err, how)
	}
	return dir, nil
}

var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

func checkBinDir(dir string) error {
	var errs []error
	for _, b := range binaries {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil {
			errs = append(errs, fmt.Errorf("missing %s", b))
			continue
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("%s is not an executable file", b))
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "stage")); err != nil || !fi.IsDir() {
		errs = append(errs, errors.New("missing stage/ (kwok's stage configurations)"))
	}
	return errors.Join(errs...)
}
