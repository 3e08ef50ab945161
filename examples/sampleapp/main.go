// Command sampleapp is the tiny vendor app the demo and the local provider's
// app.upgrade tests run: an HTTP server that reports its version on / and
// /healthz. -unhealthy makes /healthz answer 503, to exercise a rolled-back
// upgrade; -start-delay makes it slow to start. It stops cleanly on SIGTERM or SIGINT.
//
//	sampleapp -version v2 -addr 127.0.0.1:18082
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	version := flag.String("version", "v1", "version this instance reports")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	unhealthy := flag.Bool("unhealthy", false, "answer /healthz with 503")
	startDelay := flag.Duration("start-delay", 0, "wait this long before listening (a slow start, for tests that act mid-upgrade)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	select {
	case <-time.After(*startDelay):
	case <-ctx.Done():
		return
	}
	if err := run(ctx, *addr, *version, *unhealthy); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx ends.
func run(ctx context.Context, addr, version string, unhealthy bool) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if unhealthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"version": version, "healthy": !unhealthy})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "sampleapp %s (tenant %q)\n", version, os.Getenv("ATTACHE_TENANT"))
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("sampleapp %s listening on %s", version, addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
