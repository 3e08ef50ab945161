package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// shared is the cluster most tests of this package use, started on first
// use and stopped by TestMain.
var shared struct {
	once    sync.Once
	c       *Cluster
	err     error
	elapsed time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubetest:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func sharedCluster(t *testing.T) *Cluster {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		start := time.Now()
		shared.c, shared.err = StartProcess(ctx, Options{})
		shared.elapsed = time.Since(start)
	})
	if shared.err != nil {
		t.Fatalf("start shared cluster: %v", shared.err)
	}
	return shared.c
}

// TestStart starts a cluster of its own with Start, checks what a test gets
// and that t.Cleanup stops it: processes gone, directory removed.
func TestStart(t *testing.T) {
	var c *Cluster
	var pids []int
	t.Run("Start", func(t *testing.T) {
		start := time.Now()
		c = Start(t)
		elapsed := time.Since(start)
		for _, p := range c.procs {
			pids = append(pids, p.proc.Pid)
		}
		t.Logf("cluster started in %v; RSS %s", elapsed.Round(10*time.Millisecond), rss(t, c))

		ctx := context.Background()
		cs := c.Client(t)
		v, err := cs.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		if v.GitVersion != KubernetesVersion {
			t.Errorf("server version %s, want %s", v.GitVersion, KubernetesVersion)
		}
		if !strings.HasPrefix(c.Config.Host, "https://127.0.0.1:") {
			t.Errorf("host %s, want https://127.0.0.1:<port>", c.Config.Host)
		}

		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 1 || !nodeSchedulable(&nodes.Items[0]) {
			t.Fatalf("want 1 Ready schedulable node, got %+v", nodes.Items)
		}
		if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Errorf("default ServiceAccount: %v", err)
		}

		// The admin kubeconfig works for another client, and is private.
		kc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cs2, err := kubernetes.NewForConfig(kc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs2.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("admin kubeconfig cannot list secrets: %v", err)
		}

		// Keys and kubeconfigs are 0600; every process has its log.
		err = filepath.WalkDir(c.Dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if strings.HasSuffix(path, ".key") || strings.HasSuffix(path, ".kubeconfig") {
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range binaries {
			if _, err := os.Stat(filepath.Join(c.Dir, b+".log")); err != nil {
				t.Errorf("log of %s: %v", b, err)
			}
		}
	})
	if c == nil {
		t.Fatal("Start returned nothing")
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cluster directory %s still there after cleanup (%v)", c.Dir, err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still running after cleanup (%v)", pid, err)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestOptions: several nodes, and the processes' output in Options.Log.
func TestOptions(t *testing.T) {
	var log syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := StartProcess(ctx, Options{Nodes: 3, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	nodes, err := c.Client(t).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := 0
	for i := range nodes.Items {
		if nodeSchedulable(&nodes.Items[i]) {
			ready++
		}
	}
	if ready != 3 {
		t.Errorf("%d of %d nodes ready, want 3", ready, len(nodes.Items))
	}
	for _, b := range binaries {
		if !strings.Contains(log.String(), "\n"+b+": ") {
			t.Errorf("no line of %s in Options.Log", b)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStartErrors(t *testing.T) {
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		before, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
		c, err := StartProcess(ctx, Options{})
		if err == nil {
			c.Stop()
			t.Fatal("StartProcess with a canceled context succeeded")
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
		after, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
		if len(after) > len(before) {
			t.Errorf("cluster directory left behind: before %v, after %v", before, after)
		}
	})
	t.Run("nodes out of range", func(t *testing.T) {
		if _, err := StartProcess(context.Background(), Options{Nodes: maxNodes + 1}); err == nil || !strings.Contains(err.Error(), "nodes") {
			t.Errorf("error %v, want one naming nodes", err)
		}
	})
	t.Run("binaries missing", func(t *testing.T) {
		t.Setenv("ATTACHE_K8S_BIN", t.TempDir())
		if _, err := StartProcess(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "scripts/k8s-binaries.sh") {
			t.Errorf("error %v, want one saying to run scripts/k8s-binaries.sh", err)
		}
		// Start fails the test; it does not skip it.
		rec := &recorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Start(rec)
		}()
		<-done
		if rec.skipped || !rec.failed || !strings.Contains(rec.msg, "scripts/k8s-binaries.sh") {
			t.Errorf("Start without binaries: failed=%v skipped=%v msg=%q; want a failure naming scripts/k8s-binaries.sh", rec.failed, rec.skipped, rec.msg)
		}
	})
}

func TestBinDir(t *testing.T) {
	complete := t.TempDir()
	for _, b := range binaries {
		if err := os.WriteFile(filepath.Join(complete, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(complete, "stage"), 0o755); err != nil {
		t.Fatal(err)
	}
	emptyHome := t.TempDir()
	tests := []struct {
		name    string
		env     string // ATTACHE_K8S_BIN
		home    string
		want    string // dir, or "" for an error
		wantErr []string
	}{
		{name: "override", env: complete, want: complete},
		{name: "override incomplete", env: emptyHome, wantErr: []string{"ATTACHE_K8S_BIN", "missing etcd", "missing kwok", "stage/", "scripts/k8s-binaries.sh", "make deps-test"}},
		{name: "default missing", home: emptyHome, wantErr: []string{filepath.Join(emptyHome, ".cache/attache/k8s/v1.36.3-kwokv0.8.0"), "scripts/k8s-binaries.sh", "make deps-test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("ATTACHE_K8S_BIN", tt.env)
			if tt.home != "" {
				t.Setenv("HOME", tt.home)
			}
			dir, err := BinDir()
			if tt.want != "" {
				if err != nil || dir != tt.want {
					t.Fatalf("BinDir() = %q, %v; want %q", dir, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("BinDir() = %q, want an error", dir)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// rss sums the resident memory of the cluster's processes.
func rss(t *testing.T, c *Cluster) string {
	t.Helper()
	var total int64
	var parts []string
	for _, p := range c.procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.proc.Pid))
		if err != nil {
			return "unknown: " + err.Error()
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb
				parts = append(parts, fmt.Sprintf("%s %d MiB", p.name, kb/1024))
			}
		}
	}
	return fmt.Sprintf("%d MiB (%s)", total/1024, strings.Join(parts, ", "))
}

// recorder is a testing.TB whose Fatal ends only the goroutine, so a test
// can check that Start fails rather than skips.
type recorder struct {
	testing.TB
	mu      sync.Mutex
	failed  bool
	skipped bool
	msg     string
}

func (r *recorder) Helper()              {}
func (r *recorder) Cleanup(func())       {}
func (r *recorder) Fatal(a ...any)       { r.fail(fmt.Sprint(a...)) }
func (r *recorder) Skip(a ...any)        { r.skip() }
func (r *recorder) SkipNow()             { r.skip() }
func (r *recorder) FailNow()             { r.fail("") }
func (r *recorder) Skipf(string, ...any) { r.skip() }
func (r *recorder) Fatalf(format string, a ...any) {
	r.fail(fmt.Sprintf(format, a...))
}
func (r *recorder) fail(msg string) {
	r.mu.Lock()
	r.failed, r.msg = true, msg
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recorder) skip() {
	r.mu.Lock()
	r.skipped = true
	r.mu.Unlock()
	runtime.Goexit()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "\n" + s.b.String()
}

// waitFor polls cond every 100ms until it returns true or timeout passes;
// the failure names cond's last status.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var status string
	for {
		var ok bool
		ok, status = cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v; last: %s", what, timeout, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func createNamespace(t *testing.T, cs kubernetes.Interface, prefix string) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}
