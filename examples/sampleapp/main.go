// Command sampleapp is the tiny vendor app the demo and the local provider's
// app.upgrade tests run: an HTTP server that reports its version on / and
// /healthz. -unhealthy makes /healthz answer 503, to exercise a rolled-back
// upgrade; -start-delay makes it slow to start. It stops cleanly on SIGTERM or SIGINT.
//
// It serves its own metrics in the Prometheus text format on /metrics, as
// the agent's app_metrics setting expects: http_requests_total{tenant,code}
// and the histogram http_request_duration_seconds{tenant} of the requests it
// served (/ and /status/{code}; not /healthz or /metrics). The tenant label
// is -tenant (default $ATTACHE_TENANT, which the local provider sets); with
// no tenant the label is left out. GET /status/{code} answers with that
// status (200..599), to make errors on demand.
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
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	version := flag.String("version", "v1", "version this instance reports")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	unhealthy := flag.Bool("unhealthy", false, "answer /healthz with 503")
	failAfter := flag.Duration("fail-after", 0, "answer /healthz with 503 once this long has passed since the start (a bad build that passes its start-up check, for rollout gates)")
	startDelay := flag.Duration("start-delay", 0, "wait this long before listening (a slow start, for tests that act mid-upgrade)")
	tenant := flag.String("tenant", os.Getenv("ATTACHE_TENANT"), "tenant label of the metrics on /metrics (default $ATTACHE_TENANT; empty: no tenant label)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	select {
	case <-time.After(*startDelay):
	case <-ctx.Done():
		return
	}
	failing := func() bool { return *unhealthy }
	if *failAfter > 0 {
		failAt := time.Now().Add(*failAfter)
		failing = func() bool { return *unhealthy || !time.Now().Before(failAt) }
	}
	if err := run(ctx, *addr, *version, newHandler(*version, *tenant, failing)); err != nil {
		log.Fatal(err)
	}
}

// newHandler returns the app: /, /healthz, /status/{code} and /metrics.
func newHandler(version, tenant string, unhealthy func() bool) http.Handler {
	reg := prometheus.NewRegistry()
	labels := []string{"code"}
	curry := prometheus.Labels{}
	if tenant != "" {
		labels = append(labels, "tenant")
		curry["tenant"] = tenant
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_requests_total", Help: "HTTP requests served, by status code.",
	}, labels)
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "http_request_duration_seconds", Help: "Time to serve HTTP requests.", Buckets: prometheus.DefBuckets,
	}, labels[1:])
	reg.MustRegister(requests, duration)
	instrument := func(h http.Handler) http.Handler {
		return promhttp.InstrumentHandlerDuration(duration.MustCurryWith(curry),
			promhttp.InstrumentHandlerCounter(requests.MustCurryWith(curry), h))
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		bad := unhealthy()
		if bad {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"version": version, "healthy": !bad})
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /status/{code}", instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "status must be 200..599", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "sampleapp %s: %d\n", version, code)
	})))
	mux.Handle("/", instrument(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "sampleapp %s (tenant %q)\n", version, os.Getenv("ATTACHE_TENANT"))
	})))
	return mux
}

// run serves h on addr until ctx ends.
func run(ctx context.Context, addr, version string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
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
