package kubernetes

import (
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// clients are the API clients one configuration builds.
type clients struct {
	rest   *rest.Config
	kube   clientset.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// restConfig loads the kubeconfig (or the in-cluster configuration) and
// applies the rate limits, timeout and user agent. A kubeconfig other users
// may read (mode & 0o007) is refused: it holds the agent's credentials.
func (s *settings) restConfig(version string) (*rest.Config, error) {
	var cfg *rest.Config
	if s.Kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fieldError{field: "config.kubeconfig", msg: fmt.Sprintf("not set, and the in-cluster configuration is not available: %v", err)}
		}
		cfg = c
	} else {
		fi, err := os.Stat(s.Kubeconfig)
		if err != nil {
			return nil, fieldError{field: "config.kubeconfig", msg: fmt.Sprintf("%s: %v", s.Kubeconfig, unwrapPath(err))}
		}
		if mode := fi.Mode().Perm(); mode&0o007 != 0 {
			return nil, fieldError{field: "config.kubeconfig", msg: fmt.Sprintf(
				"%s has mode %04o: other users may read (or change) the credentials in it; chmod 0600", s.Kubeconfig, mode)}
		}
		loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: s.Kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: s.Context})
		c, err := loader.ClientConfig()
		if err != nil {
			field := "config.kubeconfig"
			if s.Context != "" {
				field = "config.context"
			}
			return nil, fieldError{field: field, msg: err.Error()}
		}
		cfg = c
	}
	cfg.QPS = float32(s.QPS)
	cfg.Burst = s.Burst
	cfg.Timeout = s.timeout
	cfg.UserAgent = "attache-provider-kubernetes/" + version
	return cfg, nil
}

// newClients builds the clients for cfg; warnings the API server sends
// (deprecations, Pod Security) are logged, not printed.
func newClients(cfg *rest.Config, log *slog.Logger) (*clients, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warningLogger{log: log}
	kube, err := clientset.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kube.Discovery()))
	return &clients{rest: cfg, kube: kube, dyn: dyn, mapper: mapper}, nil
}

// warningLogger logs the API server's warnings.
type warningLogger struct{ log *slog.Logger }

func (w warningLogger) HandleWarningHeader(code int, agent, text string) {
	if code == 299 && text != "" {
		w.log.Warn("kubernetes API warning", "warning", text)
	}
}

// unwrapPath drops the path from an *os.PathError (the field names it).
func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
