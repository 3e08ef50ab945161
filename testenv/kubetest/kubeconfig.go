package kubetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes a kubeconfig file (mode 0600, replaced atomically)
// for cfg, for a process that reads one, such as a provider plugin: cfg's
// host, its CA inline, and its bearer token or client certificate and key
// inline (files that cfg names are read and inlined too). Its single
// context, "kubetest", is the current one.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	if cfg == nil || cfg.Host == "" {
		return errors.New("write kubeconfig: config without host")
	}
	read := func(data []byte, file, what string) ([]byte, error) {
		if len(data) > 0 || file == "" {
			return data, nil
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("write kubeconfig: read %s: %w", what, err)
		}
		return b, nil
	}
	ca, err := read(cfg.CAData, cfg.CAFile, "CA file")
	if err != nil {
		return err
	}
	cert, err := read(cfg.CertData, cfg.CertFile, "client certificate file")
	if err != nil {
		return err
	}
	key, err := read(cfg.KeyData, cfg.KeyFile, "client key file")
	if err != nil {
		return err
	}
	token, err := read([]byte(cfg.BearerToken), cfg.BearerTokenFile, "bearer token file")
	if err != nil {
		return err
	}
	if len(token) == 0 && (len(cert) == 0 || len(key) == 0) {
		return errors.New("write kubeconfig: config has neither a bearer token nor a client certificate and key")
	}

	const name = "kubetest"
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: ca,
		TLSServerName:            cfg.ServerName,
		InsecureSkipTLSVerify:    cfg.Insecure,
	}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{
		Token:                 string(token),
		ClientCertificateData: cert,
		ClientKeyData:         key,
	}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kc.CurrentContext = name
	data, err := clientcmd.Write(*kc)
	if err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), ".kubeconfig-*")
	if err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
