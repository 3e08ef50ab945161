// Package pgtest gives tests a fresh database on a real PostgreSQL server.
//
// The first call to DSN in a test binary starts a throwaway server from the
// newest /usr/lib/postgresql/*/bin: initdb in a temporary directory, fsync
// off, listening on 127.0.0.1 on a free port and on a unix socket in that
// directory, run as the postgres OS user when the test runs as root (initdb
// refuses root). Every DSN call creates a new empty database and drops it in
// t.Cleanup.
//
// Teardown: packages that use pgtest should call Main from TestMain,
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// which stops the server and removes its directory when the tests finish.
// As a safety net the server is also started with a parent-death signal
// (SIGKILL), so it dies with the test binary even if Main is not used or the
// binary is killed; directories left behind that way are removed by the next
// run.
//
// If PostgreSQL is not installed, DSN fails the test (it never skips): run
// `make test`, which installs it, or apt-get install postgresql.
//
// Only tests import pgtest.
package pgtest

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver
)

const dirPrefix = "attache-pgtest-"

type server struct {
	dir   string // temporary directory: data/, the socket, owner.pid
	port  int
	proc  *os.Process
	exit  chan struct{} // closed when the postmaster exits
	logf  string
	admin *sql.DB
}

var (
	once    sync.Once
	srv     *server
	srvErr  error
	dbCount atomic.Int64
)

// Main runs the tests and then stops the server, if one was started, and
// removes its directory. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the server started by DSN, if any. Main calls it.
func Stop() {
	if srv == nil {
		return
	}
	srv.stop()
}

// DSN returns a connection string to a new, empty database on the test
// server, dropped when the test ends.
func DSN(t testing.TB) string {
	t.Helper()
	once.Do(func() { srv, srvErr = start() })
	if srvErr != nil {
		t.Fatalf("pgtest: %v", srvErr)
	}
	name := fmt.Sprintf("attache_test_%d", dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := srv.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := srv.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return srv.dsn(name)
}

func (s *server) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// binDir finds the newest /usr/lib/postgresql/<version>/bin with initdb and
// postgres in it.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	type cand struct {
		dir string
		ver float64
	}
	var cs []cand
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			continue
		}
		cs = append(cs, cand{d, v})
	}
	if len(cs) == 0 {
		return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin: install postgresql (make test does this; or apt-get install -y --no-install-recommends postgresql)")
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].ver > cs[j].ver })
	return cs[0].dir, nil
}

func start() (*server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	removeStale()

	// Who runs the server: ourselves, or the postgres user if we are root.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root and there is no postgres user to run the server as (install postgresql): %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)} // no supplementary groups
	}

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, exit: make(chan struct{}), logf: filepath.Join(dir, "postgres.log")}
	fail := func(err error) (*server, error) {
		s.stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fail(err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}

	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %v\n%s", err, out))
	}

	for attempt := 0; ; attempt++ {
		s.port, err = freePort()
		if err != nil {
			return fail(err)
		}
		err = s.startPostmaster(bin, data, cred)
		if err == nil {
			break
		}
		if attempt == 2 {
			return fail(err)
		}
	}

	s.admin, err = sql.Open("pgx", s.dsn("postgres"))
	if err != nil {
		return fail(err)
	}
	s.admin.SetMaxOpenConns(2)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = s.admin.PingContext(ctx)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exit:
			log, _ := os.ReadFile(s.logf)
			return fail(fmt.Errorf("postgres exited during start-up:\n%s", log))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(s.logf)
			return fail(fmt.Errorf("postgres not ready after 60s: %v\n%s", err, log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startPostmaster starts postgres from a goroutine that keeps its OS thread
// locked for the server's life: the parent-death signal fires when the
// thread that forked the child exits, and a locked thread exits only with the
// process.
func (s *server) startPostmaster(bin, data string, cred *syscall.Credential) error {
	logFile, err := os.OpenFile(s.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "shared_buffers=64MB",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	started := make(chan error, 1)
	exit := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait() //nolint:errcheck // the exit is what we wait for
		logFile.Close()
		close(exit)
		select {} // keep the thread
	}()
	if err := <-started; err != nil {
		logFile.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	// Give a port clash a moment to show.
	select {
	case <-exit:
		log, _ := os.ReadFile(s.logf)
		if bytes.Contains(log, []byte("could not bind")) || bytes.Contains(log, []byte("could not create")) {
			return fmt.Errorf("postgres could not listen on port %d:\n%s", s.port, log)
		}
		return fmt.Errorf("postgres exited:\n%s", log)
	case <-time.After(100 * time.Millisecond):
	}
	s.proc, s.exit = cmd.Process, exit
	return nil
}

func (s *server) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	if s.proc != nil {
		s.proc.Signal(syscall.SIGINT) //nolint:errcheck // fast shutdown
		select {
		case <-s.exit:
		case <-time.After(15 * time.Second):
			s.proc.Kill() //nolint:errcheck
			<-s.exit
		}
	}
	os.RemoveAll(s.dir) //nolint:errcheck // best effort
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStale removes directories left by test binaries that are gone
// (killed before Main could clean up).
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
