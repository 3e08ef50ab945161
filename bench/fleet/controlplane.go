package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"attache.dev/attache/controlplane/apiclient"
)

// ControlPlaneConfig says how to run attache-controlplane.
type ControlPlaneConfig struct {
	Binary      string // path to attache-controlplane
	DataDir     string // --data-dir
	Store       string // --store; empty means SQLite in DataDir
	TrustDomain string
	AgentAddr   string // 127.0.0.1:port
	APIAddr     string // 127.0.0.1:port
	SVIDTTL     time.Duration
	LogLevel    string
	LogPath     string // the process's stdout and stderr are appended here
	// Env is added to the environment inherited from the load generator
	// (e.g. GOGC=50, GODEBUG=gctrace=1 to see the live heap in the log).
	Env []string
}

// ControlPlane is a control-plane process started by the benchmark.
type ControlPlane struct {
	cfg  ControlPlaneConfig
	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait, valid after done is closed
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// StartControlPlane starts the process and waits until its ops API answers
// /healthz (at most timeout).
func StartControlPlane(ctx context.Context, cfg ControlPlaneConfig, timeout time.Duration) (*ControlPlane, error) {
	args := []string{"serve",
		"--data-dir", cfg.DataDir,
		"--trust-domain", cfg.TrustDomain,
		"--agent-listen", cfg.AgentAddr,
		"--api-listen", cfg.APIAddr,
		"--api-host", "127.0.0.1,localhost",
		"--log-level", cfg.LogLevel,
		"--svid-ttl", cfg.SVIDTTL.String(),
	}
	if cfg.Store != "" {
		args = append(args, "--store", cfg.Store)
	}
	logf, err := os.OpenFile(cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "\n=== %s: starting %s %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cfg.Env, " "), cfg.Binary, strings.Join(args, " "))
	cmd := exec.Command(cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), cfg.Env...)
	// If the load generator dies, so does the control plane.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", cfg.Binary, err)
	}
	cp := &ControlPlane{cfg: cfg, cmd: cmd, done: make(chan struct{})}
	go func() {
		cp.err = cmd.Wait()
		logf.Close()
		close(cp.done)
	}()
	if err := cp.waitHealthy(ctx, timeout); err != nil {
		_, _ = cp.Stop(5 * time.Second)
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) waitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-cp.done:
			return fmt.Errorf("control plane exited during start-up (%v); see %s", cp.err, cp.cfg.LogPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		c, err := cp.API()
		if err != nil {
			last = err
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = c.Health(hctx)
		cancel()
		if last == nil {
			return nil
		}
	}
	return fmt.Errorf("control plane not healthy after %s: %v; see %s", timeout, last, cp.cfg.LogPath)
}

// PID is the process ID.
func (cp *ControlPlane) PID() int { return cp.cmd.Process.Pid }

// Done is closed when the process has exited.
func (cp *ControlPlane) Done() <-chan struct{} { return cp.done }

// Stop sends SIGTERM and waits for the process to exit; after timeout it
// sends SIGKILL. It returns how long the process took to exit.
func (cp *ControlPlane) Stop(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	select {
	case <-cp.done:
		return 0, nil
	default:
	}
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, err
	}
	select {
	case <-cp.done:
		return time.Since(start), nil
	case <-time.After(timeout):
	}
	_ = cp.cmd.Process.Kill()
	<-cp.done
	return time.Since(start), fmt.Errorf("control plane did not exit within %s of SIGTERM; killed", timeout)
}

// API returns an ops API client authenticated with the admin token,
// trusting the control plane's CA (DATA/ca.crt).
func (cp *ControlPlane) API() (*apiclient.Client, error) {
	return APIClient(cp.cfg.DataDir, cp.cfg.APIAddr)
}

// APIClient returns an ops API client for the control plane whose data
// directory is dataDir and whose API listens on apiAddr (host:port),
// authenticated with the first admin token (DATA/admin.token) and trusting
// the control plane's CA (DATA/ca.crt).
func APIClient(dataDir, apiAddr string) (*apiclient.Client, error) {
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dataDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("ca.crt: no certificates")
	}
	hc := &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	return apiclient.New("https://"+apiAddr, strings.TrimSpace(string(tok)), hc), nil
}
