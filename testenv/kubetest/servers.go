package kubetest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// portAttempts is how often a server is started on a fresh port when the
// one freePort found was taken before the server could bind it.
const portAttempts = 3

// startEtcd starts etcd on two free ports (client, peer) with its data in
// Dir/etcd and returns its client URL once /health says so.
func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	for attempt := 1; ; attempt++ {
		clientPort, err := freePort()
		if err != nil {
			return "", err
		}
		peerPort, err := freePort()
		if err != nil {
			return "", err
		}
		data := filepath.Join(c.Dir, "etcd")
		if err := os.RemoveAll(data); err != nil {
			return "", err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		p, err := c.run("etcd", []string{
			"--name=kubetest",
			"--data-dir=" + data,
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubetest=" + peerURL,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync=true",
			"--log-level=warn",
		}, c.processEnv())
		if err != nil {
			return "", err
		}
		err = c.poll(ctx, readyTimeout, func(ctx context.Context) (bool, error) {
			body, err := httpGet(ctx, clientURL+"/health")
			return err == nil && strings.Contains(body, `"health":"true"`), nil
		})
		if err == nil {
			return clientURL, nil
		}
		if attempt < portAttempts && addrInUse(p) {
			c.forget(p)
			continue
		}
		return "", fmt.Errorf("etcd: %w", err)
	}
}

// startAPIServer starts kube-apiserver on a free port and sets c.Config and
// c.Kubeconfig once /readyz says ok.
func (c *Cluster) startAPIServer(ctx context.Context, etcdURL string) error {
	certPEM, keyPEM, err := c.pki.client("admin", "kubetest-admin", "system:masters")
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		p, err := c.run("kube-apiserver", []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(c.Dir, "apiserver"),
			"--tls-cert-file=" + c.pki.path(servingCert),
			"--tls-private-key-file=" + c.pki.path(servingKey),
			"--client-ca-file=" + c.pki.path(caCertFile),
			"--authorization-mode=Node,RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + c.pki.path(saPublicFile),
			"--service-account-signing-key-file=" + c.pki.path(saKeyFile),
			"--service-cluster-ip-range=" + serviceIPRange,
			"--allow-privileged=true",
			"--profiling=false",
			// The kubernetes Service cannot point at 127.0.0.1 (loopback
			// endpoints are invalid); nothing in the cluster needs it.
			"--endpoint-reconciler-type=none",
		}, c.processEnv())
		if err != nil {
			return err
		}
		c.Config = &rest.Config{
			Host: "https://127.0.0.1:" + strconv.Itoa(port),
			TLSClientConfig: rest.TLSClientConfig{
				CAData:   c.pki.caPEM,
				CertData: certPEM,
				KeyData:  keyPEM,
			},
			QPS:   clientQPS,
			Burst: clientBurst,
		}
		cs, err := kubernetes.NewForConfig(c.Config)
		if err != nil {
			return fmt.Errorf("admin client: %w", err)
		}
		var last string
		err = c.poll(ctx, readyTimeout, func(ctx context.Context) (bool, error) {
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				last = err.Error()
				return false, nil
			}
			return string(body) == "ok", nil
		})
		if err == nil {
			break
		}
		if attempt < portAttempts && addrInUse(p) {
			c.forget(p)
			continue
		}
		if last != "" {
			err = fmt.Errorf("%w (last /readyz: %s)", err, last)
		}
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := WriteKubeconfig(c.Kubeconfig, c.Config); err != nil {
		return err
	}
	return nil
}

// componentKubeconfig writes Dir/<name>.kubeconfig with a client
// certificate for user cn in groups orgs.
func (c *Cluster) componentKubeconfig(name, cn string, orgs ...string) (string, error) {
	certPEM, keyPEM, err := c.pki.client(name, cn, orgs...)
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.Dir, name+".kubeconfig")
	cfg := &rest.Config{
		Host:            c.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM, CertData: certPEM, KeyData: keyPEM},
	}
	if err := WriteKubeconfig(path, cfg); err != nil {
		return "", err
	}
	return path, nil
}

// startControllerManager starts kube-controller-manager with every default
// controller, no serving port and no leader election. Its credentials are
// in system:masters because, without --use-service-account-credentials, one
// identity needs the permissions of every controller.
func (c *Cluster) startControllerManager() error {
	kubeconfig, err := c.componentKubeconfig("kube-controller-manager", "system:kube-controller-manager", "system:masters")
	if err != nil {
		return err
	}
	_, err = c.run("kube-controller-manager", []string{
		"--kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + c.pki.path(saKeyFile),
		"--root-ca-file=" + c.pki.path(caCertFile),
		"--cluster-signing-cert-file=" + c.pki.path(caCertFile),
		"--cluster-signing-key-file=" + c.pki.path(caKeyFile),
		"--cluster-name=kubetest",
		"--service-cluster-ip-range=" + serviceIPRange,
		"--profiling=false",
		// The default 20 QPS makes a 300-replica Deployment take 15 s.
		"--kube-api-qps=500",
		"--kube-api-burst=1000",
	}, c.processEnv())
	return err
}

// startScheduler starts kube-scheduler as system:kube-scheduler (the
// bootstrap RBAC role has what it needs), no serving port, no leader
// election, no client-side throttling to speak of.
func (c *Cluster) startScheduler() error {
	kubeconfig, err := c.componentKubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	config := filepath.Join(c.Dir, "kube-scheduler.yaml")
	yaml := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
`, kubeconfig)
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		return err
	}
	_, err = c.run("kube-scheduler", []string{
		"--config=" + config,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--profiling=false",
	}, c.processEnv())
	return err
}

// startKwok writes kwok's stages (see stages) and starts kwok for the Nodes
// annotated kwok.x-k8s.io/node=fake, with node leases, and its health server
// on a free port; it returns once /healthz answers.
func (c *Cluster) startKwok(ctx context.Context) error {
	kubeconfig, err := c.componentKubeconfig("kwok", "kwok", "system:masters")
	if err != nil {
		return err
	}
	stageYAML, err := stages(filepath.Join(c.bin, "stage"))
	if err != nil {
		return fmt.Errorf("kwok stages: %w", err)
	}
	config := filepath.Join(c.Dir, "kwok.yaml")
	if err := os.WriteFile(config, stageYAML, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "home"), 0o700); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		p, err := c.run("kwok", []string{
			"--kubeconfig=" + kubeconfig,
			"--config=" + config,
			"--manage-all-nodes=false",
			"--manage-nodes-with-annotation-selector=" + fakeNodeAnnotation + "=" + fakeNodeValue,
			"--node-lease-duration-seconds=40",
			"--server-address=" + addr,
		}, c.processEnv())
		if err != nil {
			return err
		}
		err = c.poll(ctx, readyTimeout, func(ctx context.Context) (bool, error) {
			_, err := httpGet(ctx, "http://"+addr+"/healthz")
			return err == nil, nil
		})
		if err == nil {
			return nil
		}
		if attempt < portAttempts && addrInUse(p) {
			c.forget(p)
			continue
		}
		return fmt.Errorf("kwok: %w", err)
	}
}

// forget stops a process that could not bind its port and drops it from
// c.procs, before a retry.
func (c *Cluster) forget(p *process) {
	p.proc.Kill() //nolint:errcheck // it has usually exited already
	<-p.done
	c.procs = slices.DeleteFunc(c.procs, func(q *process) bool { return q == p })
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}
