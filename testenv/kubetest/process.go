package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const dirPrefix = "attache-kubetest-"

// process is one server of the cluster, run through setpriv so that it gets
// SIGKILL when the test binary dies.
type process struct {
	name    string
	logPath string
	proc    *os.Process
	done    chan struct{} // closed when the process has exited
	waitErr error         // its exit status; valid once done is closed
}

func lookSetpriv() (string, error) {
	p, err := exec.LookPath("setpriv")
	if err != nil {
		return "", fmt.Errorf("setpriv not found (it starts the cluster's processes with a parent-death signal; it is in util-linux: apt-get install util-linux): %w", err)
	}
	return p, nil
}

// run starts `setpriv --pdeathsig KILL -- <bin>/<name> args...` with its
// output in Dir/<name>.log (and Options.Log) and adds it to c.procs.
//
// The parent-death signal fires when the thread that forked the child exits,
// not the process, so the child is started from a goroutine that keeps its OS
// thread locked until the child has exited: a locked thread exits only with
// the process (or when the child is gone, and then nothing is left to kill).
func (c *Cluster) run(name string, args []string, env []string) (*process, error) {
	p := &process{name: name, logPath: filepath.Join(c.Dir, name+".log"), done: make(chan struct{})}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: open log: %w", name, err)
	}
	var out io.Writer = logFile
	if c.opts.Log != nil {
		out = io.MultiWriter(logFile, &prefixWriter{w: c.opts.Log, mu: &logMu, prefix: name + ": "})
	}
	cmd := exec.Command(c.setpriv, append([]string{"--pdeathsig", "KILL", "--", filepath.Join(c.bin, name)}, args...)...)
	cmd.Dir = c.Dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the child
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.proc = cmd.Process
	c.procs = append(c.procs, p)
	return p, nil
}

// processEnv is the environment of the cluster's processes: ours without
// KUBECONFIG, and with HOME in Dir so kwok does not read ~/.kwok/kwok.yaml.
func (c *Cluster) processEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KUBECONFIG=") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+filepath.Join(c.Dir, "home"))
}

// stopAll stops the processes in reverse start order, each with SIGTERM
// and, if it has not exited after stopGrace, SIGKILL. The order matters:
// etcd waits for the API server's connections to close before it exits, and
// the API server for its clients' requests.
func stopAll(procs []*process) {
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		select {
		case <-p.done:
			continue
		default:
		}
		p.proc.Signal(syscall.SIGTERM) //nolint:errcheck // it may have just exited
		select {
		case <-p.done:
			continue
		case <-time.After(stopGrace):
		}
		p.proc.Kill() //nolint:errcheck // it may have just exited
		select {
		case <-p.done:
		case <-time.After(stopGrace):
		}
	}
}

// tail returns the last lines of a log file, for errors.
func tail(path string) string {
	const maxTail = 4096
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	off := fi.Size() - maxTail
	if off < 0 {
		off = 0
	}
	b := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(b, off)
	b = b[:n]
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	if len(b) == 0 {
		return "(empty log)"
	}
	return string(b)
}

// addrInUse reports whether a process's log says its port was taken between
// freePort and its start.
func addrInUse(p *process) bool {
	return p != nil && strings.Contains(tail(p.logPath), "address already in use")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// logMu serializes the lines of all processes written to Options.Log.
var logMu sync.Mutex

// prefixWriter writes whole lines, each with a prefix, to w.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.mu.Lock()
		p.w.Write([]byte(p.prefix + string(p.buf[:i+1]))) //nolint:errcheck // logging is best effort
		p.mu.Unlock()
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

// removeStale removes cluster directories left by test binaries that are
// gone (killed before Stop); their processes died with them.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d) //nolint:errcheck // best effort
		}
	}
}
