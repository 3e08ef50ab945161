package telemetry

// The vendor app's own metrics: when the agent's config declares the app's
// Prometheus endpoint (Config.AppMetrics), every collection round scrapes it
// alongside the providers and turns the standard HTTP server series into
// usage records for the agent's tenant:
//
//	http_requests_total (counter)                → app.http_requests            increase since the last scrape
//	  the same series with code/status 5xx       → app.http_errors              increase since the last scrape
//	http_request_duration_seconds (histogram)    → app.http_latency_p95_seconds p95 of the observations since the last scrape
//
// Increases are computed per series: a series whose value went down was
// reset (the app restarted) and its whole new value is the increase; a
// series that was not there at the last scrape appeared since (client_golang
// creates labelled series at their first observation) and its whole value
// is the increase too. The p95 is estimated from the per-bucket increases
// as PromQL's histogram_quantile does (linear interpolation within the
// bucket holding the rank); with no observations there is no record.
//
// Tenancy: when any series of a family carries the tenant label, only those
// whose label is the agent's own tenant count; those naming another tenant
// are ignored and counted in the "usage" component, those without the label
// are ignored and counted in the "app-metrics" component. When no series
// carries it, every series counts.
//
// The last scrape is kept in memory only: the first scrape after the agent
// starts is a baseline and yields no records, so what the app served
// between the agent's last scrape before it stopped and its first after it
// started is not reported. A failed scrape (unreachable, not HTTP 200, too
// large, unparsable) turns the "app-metrics" component unhealthy and keeps
// the previous scrape as the baseline, so the next successful scrape
// reports everything since the last successful one. Scraping runs
// concurrently with the provider calls and never holds them up.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"attache.dev/attache/agent/spool"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// App metrics: meters, families read, component, defaults and bounds.
const (
	MeterAppRequests   = "app.http_requests"
	MeterAppErrors     = "app.http_errors"
	MeterAppLatencyP95 = "app.http_latency_p95_seconds"

	// FamilyRequests and FamilyDuration are the metric families read.
	FamilyRequests = "http_requests_total"
	FamilyDuration = "http_request_duration_seconds"

	// AppMetricsComponent is the health component of the scrape.
	AppMetricsComponent = "app-metrics"
	// AppMeterPrefix is the prefix of the app's meters; no provider may
	// be named "app" while AppMetrics is set.
	AppMeterPrefix = "app."

	DefaultTenantLabel       = "tenant"
	DefaultAppMetricsTimeout = 5 * time.Second
	MinAppMetricsTimeout     = time.Second
	MaxAppMetricsTimeout     = time.Minute
	// DefaultAppMetricsMaxBytes bounds a scrape's (decompressed) body.
	DefaultAppMetricsMaxBytes = 8 << 20
)

// AppMetrics configures scraping the vendor app's Prometheus endpoint.
type AppMetrics struct {
	// URL of the endpoint, http or https, in the text exposition format.
	URL string
	// TenantLabel is the label naming a series' tenant; default
	// DefaultTenantLabel.
	TenantLabel string
	// Timeout bounds one scrape; default DefaultAppMetricsTimeout, between
	// MinAppMetricsTimeout and MaxAppMetricsTimeout.
	Timeout time.Duration
	// MaxBytes bounds the response body; default DefaultAppMetricsMaxBytes.
	MaxBytes int64
	// Client makes the requests; nil means a client of its own that
	// connects directly (no proxy from the environment: the app runs next
	// to the agent) and follows no redirects.
	Client *http.Client
}

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// Validate reports every problem at once, each named by its config key
// (url, tenant_label, timeout). Zero TenantLabel and Timeout mean the
// defaults.
func (a AppMetrics) Validate() error {
	var errs []error
	if a.URL == "" {
		errs = append(errs, errors.New("url is required"))
	} else if u, err := url.Parse(a.URL); err != nil {
		errs = append(errs, fmt.Errorf("url: %v", err))
	} else {
		if u.Scheme != "http" && u.Scheme != "https" {
			errs = append(errs, fmt.Errorf("url: scheme must be http or https, not %q", u.Scheme))
		}
		if u.Host == "" || u.Hostname() == "" {
			errs = append(errs, errors.New("url: host is required"))
		}
		if u.User != nil {
			errs = append(errs, errors.New("url: credentials in the URL are not supported (the URL shows in health reports)"))
		}
		if u.Fragment != "" {
			errs = append(errs, errors.New("url: must not have a fragment"))
		}
	}
	if a.TenantLabel != "" && (!labelNameRE.MatchString(a.TenantLabel) || strings.HasPrefix(a.TenantLabel, "__")) {
		errs = append(errs, fmt.Errorf("tenant_label: %q is not a Prometheus label name", a.TenantLabel))
	}
	if a.Timeout != 0 && (a.Timeout < MinAppMetricsTimeout || a.Timeout > MaxAppMetricsTimeout) {
		errs = append(errs, fmt.Errorf("timeout: %s is outside %s..%s", a.Timeout, MinAppMetricsTimeout, MaxAppMetricsTimeout))
	}
	if a.MaxBytes < 0 {
		errs = append(errs, errors.New("max bytes must not be negative"))
	}
	return errors.Join(errs...)
}

// appScraper scrapes the app and remembers the last successful scrape.
type appScraper struct {
	cfg    AppMetrics
	tenant string
	client *http.Client

	mu   sync.Mutex // one scrape at a time; guards prev
	prev *appSnapshot
}

// appSnapshot is what one scrape read of the series that count.
type appSnapshot struct {
	requests map[string]counterSeries
	hists    map[string]histSeries
}

type counterSeries struct {
	value float64
	error bool // code/status 5xx
}

type histSeries struct {
	count   float64             // observations (the +Inf bucket)
	buckets map[float64]float64 // finite upper bound → cumulative count
}

// appResult is what a scrape contributes to a round.
type appResult struct {
	recs             []spool.Record
	foreign, invalid uint64
	comp             *agentv1.ComponentHealth
}

func newAppScraper(cfg AppMetrics, tenant string) (*appScraper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("telemetry: AppMetrics: %w", err)
	}
	if cfg.TenantLabel == "" {
		cfg.TenantLabel = DefaultTenantLabel
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultAppMetricsTimeout
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultAppMetricsMaxBytes
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{
			Transport: &http.Transport{
				Proxy:                 nil,
				DialContext:           (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
				TLSHandshakeTimeout:   cfg.Timeout,
				ResponseHeaderTimeout: cfg.Timeout,
				MaxIdleConns:          2,
				IdleConnTimeout:       2 * time.Minute,
				ForceAttemptHTTP2:     true,
			},
			CheckRedirect: func(req *http.Request, _ []*http.Request) error {
				return fmt.Errorf("redirected to %s: redirects are not followed; configure the final URL", req.URL.Redacted())
			},
		}
	}
	return &appScraper{cfg: cfg, tenant: tenant, client: client}, nil
}

// start scrapes in the background; the function returned waits for the
// result (and may be called more than once).
func (s *appScraper) start(ctx context.Context, now time.Time) func() appResult {
	ch := make(chan appResult, 1)
	go func() { ch <- s.scrape(ctx, now) }()
	return sync.OnceValue(func() appResult { return <-ch })
}

func (s *appScraper) scrape(ctx context.Context, now time.Time) appResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	fams, err := s.fetch(ctx)
	if err != nil {
		return appResult{comp: component(AppMetricsComponent, agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, "scrape failed: "+err.Error())}
	}
	cur, st := s.read(fams)
	res := appResult{foreign: st.foreign}
	var notes []string
	if st.unlabelled > 0 {
		notes = append(notes, fmt.Sprintf("%d series without the %q label ignored", st.unlabelled, s.cfg.TenantLabel))
	}
	notes = append(notes, st.notes...)
	if st.foreign > 0 {
		notes = append(notes, fmt.Sprintf("%d series of other tenants ignored", st.foreign))
	}
	prev := s.prev
	s.prev = cur
	summary := fmt.Sprintf("%d request series, %d latency series", len(cur.requests), len(cur.hists))
	if prev == nil {
		msg := "baseline scrape (" + summary + "); increases are reported from the next scrape"
		if len(notes) > 0 {
			msg += "; " + strings.Join(notes, "; ")
		}
		res.comp = component(AppMetricsComponent, agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, msg)
		return res
	}

	add := func(meter string, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			res.invalid++
			return
		}
		res.recs = append(res.recs, spool.Record{Tenant: s.tenant, Meter: meter, Value: v, At: now})
	}
	if st.haveRequests {
		var reqs, errs float64
		for k, c := range cur.requests {
			inc := c.value
			if p, ok := prev.requests[k]; ok && c.value >= p.value {
				inc = c.value - p.value
			}
			reqs += inc
			if c.error {
				errs += inc
			}
		}
		add(MeterAppRequests, reqs)
		add(MeterAppErrors, errs)
	}
	if st.haveDuration {
		inc := map[float64]float64{}
		var total float64
		for k, h := range cur.hists {
			d := h.increase(prev.hists[k])
			total += d.count
			for ub, c := range d.buckets {
				inc[ub] += c
			}
		}
		if total > 0 {
			p95 := bucketQuantile(0.95, inc, total)
			if math.IsNaN(p95) {
				notes = append(notes, fmt.Sprintf("%s has no finite buckets: no p95", FamilyDuration))
			} else {
				add(MeterAppLatencyP95, p95)
			}
		}
	}
	msg := summary
	if len(notes) > 0 {
		msg += "; " + strings.Join(notes, "; ")
	}
	res.comp = component(AppMetricsComponent, agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, msg)
	return res
}

// fetch GETs the endpoint and parses the text format, refusing a body over
// MaxBytes.
func (s *appScraper) fetch(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	req.Header.Set("User-Agent", "attache-agent")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %s", redacted(s.cfg.URL), resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); strings.Contains(ct, "protobuf") || strings.Contains(ct, "openmetrics") {
		return nil, fmt.Errorf("GET %s: content type %q; only the Prometheus text format is read", redacted(s.cfg.URL), ct)
	}
	tooLarge := fmt.Errorf("GET %s: response larger than %d bytes", redacted(s.cfg.URL), s.cfg.MaxBytes)
	if resp.ContentLength > s.cfg.MaxBytes {
		return nil, tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the response: %w", redacted(s.cfg.URL), err)
	}
	if int64(len(body)) > s.cfg.MaxBytes {
		return nil, tooLarge
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", redacted(s.cfg.URL), err)
	}
	return fams, nil
}

func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(the configured URL)"
	}
	return u.Redacted()
}

type readStats struct {
	foreign, unlabelled        uint64
	haveRequests, haveDuration bool
	notes                      []string
}

// read picks the series that count for the agent's tenant.
func (s *appScraper) read(fams map[string]*dto.MetricFamily) (*appSnapshot, readStats) {
	snap := &appSnapshot{requests: map[string]counterSeries{}, hists: map[string]histSeries{}}
	var st readStats
	if mf := fams[FamilyRequests]; mf == nil {
		st.notes = append(st.notes, FamilyRequests+" not exposed")
	} else if t := mf.GetType(); t != dto.MetricType_COUNTER && t != dto.MetricType_UNTYPED {
		st.notes = append(st.notes, fmt.Sprintf("%s is a %s, not a counter: ignored", FamilyRequests, strings.ToLower(t.String())))
	} else {
		st.haveRequests = true
		for _, m := range s.own(mf, &st) {
			v := m.GetCounter().GetValue()
			if t == dto.MetricType_UNTYPED {
				v = m.GetUntyped().GetValue()
			}
			snap.requests[seriesKey(m)] = counterSeries{value: v, error: isServerError(m)}
		}
	}
	if mf := fams[FamilyDuration]; mf == nil {
		st.notes = append(st.notes, FamilyDuration+" not exposed")
	} else if t := mf.GetType(); t != dto.MetricType_HISTOGRAM {
		st.notes = append(st.notes, fmt.Sprintf("%s is a %s, not a histogram: ignored", FamilyDuration, strings.ToLower(t.String())))
	} else {
		st.haveDuration = true
		for _, m := range s.own(mf, &st) {
			h := m.GetHistogram()
			hs := histSeries{count: float64(h.GetSampleCount()), buckets: map[float64]float64{}}
			if h.SampleCountFloat != nil {
				hs.count = h.GetSampleCountFloat()
			}
			for _, b := range h.GetBucket() {
				c := float64(b.GetCumulativeCount())
				if b.CumulativeCountFloat != nil {
					c = b.GetCumulativeCountFloat()
				}
				if math.IsInf(b.GetUpperBound(), 1) {
					hs.count = c
					continue
				}
				if !math.IsNaN(b.GetUpperBound()) {
					hs.buckets[b.GetUpperBound()] = c
				}
			}
			snap.hists[seriesKey(m)] = hs
		}
	}
	return snap, st
}

// own returns the series of mf that count for the agent's tenant: those
// naming it when any series carries the tenant label, else all.
func (s *appScraper) own(mf *dto.MetricFamily, st *readStats) []*dto.Metric {
	labelled := false
	for _, m := range mf.GetMetric() {
		if labelValue(m, s.cfg.TenantLabel) != "" {
			labelled = true
			break
		}
	}
	if !labelled {
		return mf.GetMetric()
	}
	var out []*dto.Metric
	for _, m := range mf.GetMetric() {
		switch t := labelValue(m, s.cfg.TenantLabel); {
		case t == s.tenant:
			out = append(out, m)
		case t == "":
			st.unlabelled++
		default:
			st.foreign++
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

var serverErrorRE = regexp.MustCompile(`^5([0-9][0-9]|xx|XX)$`)

// isServerError: the series' code (or, without one, status) label is 5xx.
func isServerError(m *dto.Metric) bool {
	code := labelValue(m, "code")
	if code == "" {
		code = labelValue(m, "status")
	}
	return serverErrorRE.MatchString(code)
}

// seriesKey identifies a series within its family by its sorted labels.
func seriesKey(m *dto.Metric) string {
	ls := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		ls = append(ls, l.GetName()+"\xff"+l.GetValue())
	}
	slices.Sort(ls)
	return strings.Join(ls, "\xfe")
}

// increase is h's increase since prev: all of h when the series is new or
// was reset (its count or a bucket went down).
func (h histSeries) increase(prev histSeries) histSeries {
	if prev.buckets == nil || h.count < prev.count {
		return h
	}
	for ub, c := range h.buckets {
		if c < prev.buckets[ub] {
			return h
		}
	}
	d := histSeries{count: h.count - prev.count, buckets: make(map[float64]float64, len(h.buckets))}
	for ub, c := range h.buckets {
		d.buckets[ub] = c - prev.buckets[ub]
	}
	return d
}

// bucketQuantile estimates the q-quantile from cumulative bucket counts
// (finite upper bound → count) and the total count (the +Inf bucket) as
// PromQL's histogram_quantile does: counts are made monotonic, the rank is
// located, and the value interpolated linearly within its bucket (from 0
// for the first bucket when its bound is positive); a rank in the +Inf
// bucket yields the largest finite bound. NaN without finite buckets or
// observations.
func bucketQuantile(q float64, buckets map[float64]float64, total float64) float64 {
	if len(buckets) == 0 || !(total > 0) {
		return math.NaN()
	}
	type bucket struct{ ub, count float64 }
	bs := make([]bucket, 0, len(buckets)+1)
	for ub, c := range buckets {
		bs = append(bs, bucket{ub, c})
	}
	slices.SortFunc(bs, func(a, b bucket) int { return compareFloat(a.ub, b.ub) })
	bs = append(bs, bucket{math.Inf(1), total})
	for i := 1; i < len(bs); i++ { // monotonic, as PromQL ensures
		if bs[i].count < bs[i-1].count {
			bs[i].count = bs[i-1].count
		}
	}
	total = bs[len(bs)-1].count
	rank := q * total
	b := 0
	for b < len(bs)-1 && bs[b].count < rank {
		b++
	}
	if b == len(bs)-1 {
		return bs[len(bs)-2].ub
	}
	if b == 0 && bs[0].ub <= 0 {
		return bs[0].ub
	}
	start, end, count := 0.0, bs[b].ub, bs[b].count
	if b > 0 {
		start = bs[b-1].ub
		count -= bs[b-1].count
		rank -= bs[b-1].count
	}
	if count == 0 {
		return end
	}
	return start + (end-start)*(rank/count)
}

func compareFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
