// Package telemetry is the agent's collector of health and usage: every
// interval it asks each provider for Health and Usage, writes the usage to
// the durable spool (agent/spool) BEFORE anything is sent, and serves the
// session both the heartbeat's component health and the spooled batches
// (it implements session.Usage).
//
// Usage policy: a provider's samples count for the agent's own tenant (a
// sample naming another tenant is not sent: the control plane would refuse
// the whole batch; such samples are counted and shown in the "usage"
// component). Meters are prefixed with the provider's name
// ("postgres.storage_bytes") so providers cannot collide. When the spool is
// full, samples wait in memory (up to Config.MaxBacklog records) and the "usage"
// component turns degraded — back-pressure the control plane sees in the
// heartbeat; only beyond that bound are the oldest waiting samples lost, and
// the component turns unhealthy with the count. Usage is never dropped
// silently.
//
// With Config.AppMetrics the collector also scrapes the vendor app's
// Prometheus endpoint each round, concurrently with the providers, and
// reports app.http_requests, app.http_errors and
// app.http_latency_p95_seconds (see appmetrics.go and the "app-metrics"
// component).
//
// Only the agent's command (agent/agentcli) imports telemetry.
package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/spool"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// Defaults and bounds.
const (
	// A sample is taken as it comes when its time is within maxSampleAge
	// before and maxSampleSkew after the collection; otherwise it is
	// counted as invalid (usage meters are readings, not history).
	maxSampleAge       = 7 * 24 * time.Hour
	maxSampleSkew      = 5 * time.Minute
	DefaultInterval    = time.Minute
	DefaultCallTimeout = 20 * time.Second
	// DefaultMaxBacklog bounds the samples kept in memory while the spool
	// is full.
	DefaultMaxBacklog = 100_000
	// MaxComponentsPerProvider bounds the health components taken from one
	// provider per round.
	MaxComponentsPerProvider = 200
	// MaxDriftDetail is the most bytes of a component's drift detail the
	// agent sends (agentv1.ComponentHealth.drift_detail: at most 1 KiB); a
	// longer one is cut on a UTF-8 boundary.
	MaxDriftDetail = 1024
)

// Providers hands out the agent's providers; *catalog.Catalog satisfies it.
type Providers interface {
	Names() []string
	Provider(name string) (sdk.Provider, error)
}

// Config configures a Collector.
type Config struct {
	// Spool is where usage is written before it is sent. Required.
	Spool *spool.Spool
	// Providers are asked for Health and Usage; nil means none.
	Providers Providers
	// Tenant is the agent's own tenant. Required.
	Tenant string
	// Interval between collections; default DefaultInterval.
	Interval time.Duration
	// CallTimeout bounds each provider call; default DefaultCallTimeout.
	CallTimeout time.Duration
	// MaxBacklog bounds the samples kept in memory while the spool is
	// full; default DefaultMaxBacklog.
	MaxBacklog int
	// AppMetrics, when set, is the vendor app's Prometheus endpoint,
	// scraped every round; no provider may be named "app".
	AppMetrics *AppMetrics
	// Self reports the agent's own components (agent, svid); may be nil.
	Self   func() []*agentv1.ComponentHealth
	Logger *slog.Logger
	Now    func() time.Time
}

// Collector collects, spools and serves health and usage.
type Collector struct {
	cfg     Config
	changed chan struct{}
	app     *appScraper // nil without Config.AppMetrics

	mu        sync.Mutex
	providers []*agentv1.ComponentHealth // from the last round
	backlog   []spool.Record             // waiting for room in the spool
	lost      uint64                     // samples dropped beyond MaxBacklog
	foreign   uint64                     // samples naming another tenant
	invalid   uint64                     // samples with a bad meter or value
	lastErr   string                     // last spool error other than full
	appComp   *agentv1.ComponentHealth   // the last scrape's, with AppMetrics
	rounds    uint64
	lastSig   string // component names, statuses and drift of the last spooled health snapshot
}

// New returns a collector; Run starts it.
func New(cfg Config) (*Collector, error) {
	if cfg.Spool == nil {
		return nil, fmt.Errorf("telemetry: Spool is required")
	}
	if cfg.Tenant == "" {
		return nil, fmt.Errorf("telemetry: Tenant is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Logger == nil {
		return nil, fmt.Errorf("telemetry: Logger is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxBacklog <= 0 {
		cfg.MaxBacklog = DefaultMaxBacklog
	}
	c := &Collector{cfg: cfg, changed: make(chan struct{}, 1)}
	if cfg.AppMetrics != nil {
		if cfg.Providers != nil && slices.Contains(cfg.Providers.Names(), "app") {
			return nil, fmt.Errorf("telemetry: a provider named \"app\" would share the app metrics' meter prefix %q", AppMeterPrefix)
		}
		var err error
		if c.app, err = newAppScraper(*cfg.AppMetrics, cfg.Tenant); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Run collects at once and then every Interval until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.Collect(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Collect runs one round: health and usage from every provider, usage
// spooled (with whatever waited for room), the session signalled.
func (c *Collector) Collect(ctx context.Context) {
	now := c.cfg.Now()
	var (
		comps            []*agentv1.ComponentHealth
		recs             []spool.Record
		foreign, invalid uint64
		providerNames    []string
	)
	app := func() appResult { return appResult{} }
	if c.app != nil {
		app = c.app.start(ctx, now)
		defer app() // a round cut short still waits for its scrape
	}
	if c.cfg.Providers != nil {
		providerNames = c.cfg.Providers.Names()
	}
	for _, name := range providerNames {
		p, err := c.cfg.Providers.Provider(name)
		if err != nil {
			comps = append(comps, component("provider/"+name, agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, err.Error()))
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		h, err := p.Health(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			comps = append(comps, component("provider/"+name, agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, "health: "+err.Error()))
		} else {
			for i, hc := range h.GetComponents() {
				if i == MaxComponentsPerProvider {
					comps = append(comps, component("provider/"+name, agentv1.HealthStatus_HEALTH_STATUS_DEGRADED,
						fmt.Sprintf("%d more components not reported", len(h.GetComponents())-i)))
					break
				}
				cname := "provider/" + name + "/" + hc.GetName()
				if t := hc.GetTenant(); t != "" && t != c.cfg.Tenant {
					cname += "@" + t
				}
				comps = append(comps, providerComponent(cname, hc))
			}
		}
		cctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		u, err := p.Usage(cctx, &providerv1.UsageRequest{Tenants: []string{c.cfg.Tenant}})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.cfg.Logger.Warn("provider usage", "provider", name, "err", err)
			comps = append(comps, component("provider/"+name+"/usage", agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, err.Error()))
			continue
		}
		prefix := strings.ReplaceAll(name, "-", "_") + "."
		for _, s := range u.GetSamples() {
			if t := s.GetTenant(); t != "" && t != c.cfg.Tenant {
				foreign++
				continue
			}
			meter := prefix + s.GetMeter()
			v := s.GetValue()
			if !spool.ValidMeter(meter) || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				invalid++
				continue
			}
			at := now
			if s.GetTime() != nil && s.GetTime().IsValid() {
				at = s.GetTime().AsTime()
			}
			// A sample from the far past or future would be refused by the
			// spool and the control plane with the whole batch.
			if at.Before(now.Add(-maxSampleAge)) || at.After(now.Add(maxSampleSkew)) {
				invalid++
				continue
			}
			recs = append(recs, spool.Record{Tenant: c.cfg.Tenant, Meter: meter, Value: v, At: at})
		}
	}

	ar := app()
	recs = append(recs, ar.recs...)
	foreign += ar.foreign
	invalid += ar.invalid

	c.mu.Lock()
	defer c.mu.Unlock()
	c.rounds++
	c.providers = comps
	if ar.comp != nil {
		c.appComp = ar.comp
	}
	c.foreign += foreign
	c.invalid += invalid
	if foreign > 0 {
		c.cfg.Logger.Warn("usage samples for other tenants not sent", "count", foreign, "tenant", c.cfg.Tenant)
	}
	if invalid > 0 {
		c.cfg.Logger.Warn("usage samples with an invalid meter, value or time not sent", "count", invalid)
	}
	if ar.comp != nil && ar.comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		c.cfg.Logger.Warn("app metrics", "err", ar.comp.GetMessage())
	}
	c.spoolHealth(now)
	pending := append(c.backlog, recs...)
	if len(pending) == 0 {
		return
	}
	_, err := c.cfg.Spool.AddUsage(pending)
	switch {
	case err == nil:
		c.backlog, c.lastErr = nil, ""
		select {
		case c.changed <- struct{}{}:
		default:
		}
	default:
		if over := len(pending) - c.cfg.MaxBacklog; over > 0 {
			c.lost += uint64(over)
			pending = pending[over:]
			c.cfg.Logger.Error("usage samples lost: the spool is full and the backlog is at its bound", "lost", over, "backlog", len(pending))
		}
		c.backlog = append([]spool.Record(nil), pending...)
		c.lastErr = err.Error()
		c.cfg.Logger.Warn("usage not spooled yet; kept in memory", "records", len(pending), "err", err)
	}
}

// Health is the heartbeat's component list: the agent's own, the
// providers' from the last round, the app metrics scrape's (with
// AppMetrics), and the usage pipeline's.
func (c *Collector) Health() []*agentv1.ComponentHealth {
	self := c.self()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.components(self)
}

// self is the agent's own components, if Config.Self is set.
func (c *Collector) self() []*agentv1.ComponentHealth {
	if c.cfg.Self == nil {
		return nil
	}
	return c.cfg.Self()
}

// components is self, the providers' components from the last round, the
// app metrics scrape's and the usage pipeline's, sorted by name; c.mu must
// be held.
func (c *Collector) components(self []*agentv1.ComponentHealth) []*agentv1.ComponentHealth {
	out := append([]*agentv1.ComponentHealth(nil), self...)
	out = append(out, c.providers...)
	if c.appComp != nil {
		out = append(out, c.appComp)
	}
	out = append(out, c.usageComponent())
	sort.SliceStable(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// usageComponent describes the usage pipeline; c.mu must be held.
func (c *Collector) usageComponent() *agentv1.ComponentHealth {
	st := c.cfg.Spool.Stats()
	msg := fmt.Sprintf("%d batches (%d records, %d bytes) waiting for acknowledgement", st.UsageBatches, st.UsageRecords, st.Bytes)
	status := agentv1.HealthStatus_HEALTH_STATUS_HEALTHY
	var notes []string
	if len(c.backlog) > 0 {
		status = agentv1.HealthStatus_HEALTH_STATUS_DEGRADED
		notes = append(notes, fmt.Sprintf("back-pressure: %d samples wait in memory (%s)", len(c.backlog), c.lastErr))
	}
	if c.foreign > 0 {
		notes = append(notes, fmt.Sprintf("%d samples named another tenant and were not sent", c.foreign))
	}
	if c.invalid > 0 {
		notes = append(notes, fmt.Sprintf("%d samples had an invalid meter, value or time and were not sent", c.invalid))
	}
	if c.lost > 0 {
		status = agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
		notes = append(notes, fmt.Sprintf("%d samples LOST: the spool stayed full beyond the backlog bound", c.lost))
	}
	if len(notes) > 0 {
		msg += "; " + strings.Join(notes, "; ")
	}
	return component("usage", status, msg)
}

// spoolHealth writes a health snapshot to the spool when a component's
// status or drift changed since the last one (so the control plane's health
// history gets the change at the time it happened, even across a
// disconnect; the spool drops the oldest snapshots first when it is short of
// room). A changed message or drift detail alone is not a change. c.mu must
// be held.
func (c *Collector) spoolHealth(now time.Time) {
	comps := c.components(c.self())
	var sig strings.Builder
	snap := spool.Health{At: now, Components: make([]spool.Component, 0, len(comps))}
	for _, hc := range comps[:min(len(comps), spool.MaxComponents)] {
		sig.WriteString(hc.GetName() + "=" + hc.GetStatus().String())
		if hc.GetDrift() {
			sig.WriteString(" drift")
		}
		sig.WriteByte('\n')
		snap.Components = append(snap.Components, spool.Component{
			Name: truncate(hc.GetName(), spool.MaxComponentNameLen), Status: hc.GetStatus().String(),
			Message: truncate(hc.GetMessage(), spool.MaxMessageLen),
			Drift:   hc.GetDrift(), DriftDetail: truncate(hc.GetDriftDetail(), spool.MaxDriftDetailLen),
		})
	}
	if sig.String() == c.lastSig {
		return
	}
	if err := c.cfg.Spool.AddHealth(snap); err != nil {
		c.cfg.Logger.Warn("health snapshot not spooled", "err", err)
		return
	}
	c.lastSig = sig.String()
}

// HealthHistory removes and returns up to limit spooled health snapshots,
// oldest first, as heartbeats carrying the time of the change
// (session.Usage). They are not kept once taken: health may be lost, usage
// never.
func (c *Collector) HealthHistory(limit int) ([]*agentv1.Heartbeat, error) {
	hs, err := c.cfg.Spool.TakeHealth(limit)
	if err != nil {
		return nil, err
	}
	out := make([]*agentv1.Heartbeat, 0, len(hs))
	for _, h := range hs {
		hb := &agentv1.Heartbeat{SentAt: timestamppb.New(h.At)}
		for _, cp := range h.Components {
			hb.Components = append(hb.Components, &agentv1.ComponentHealth{
				Name: cp.Name, Status: agentv1.HealthStatus(agentv1.HealthStatus_value[cp.Status]), Message: cp.Message,
				Drift: cp.Drift, DriftDetail: cp.DriftDetail,
			})
		}
		out = append(out, hb)
	}
	return out, nil
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Changed is signalled after usage was spooled (session.Usage).
func (c *Collector) Changed() <-chan struct{} { return c.changed }

// Pending returns spooled batches for the session (session.Usage).
func (c *Collector) Pending(after uint64, limit int) ([]*agentv1.UsageBatch, error) {
	bs, err := c.cfg.Spool.Pending(after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*agentv1.UsageBatch, 0, len(bs))
	for _, b := range bs {
		ub := &agentv1.UsageBatch{Sequence: b.Sequence, Records: make([]*agentv1.UsageRecord, 0, len(b.Records))}
		for _, r := range b.Records {
			ub.Records = append(ub.Records, &agentv1.UsageRecord{Tenant: r.Tenant, Meter: r.Meter, Value: r.Value, At: timestamppb.New(r.At)})
		}
		out = append(out, ub)
	}
	return out, nil
}

// Acked deletes an acknowledged batch from the spool (session.Usage).
func (c *Collector) Acked(seq uint64) error { return c.cfg.Spool.Ack(seq) }

func component(name string, st agentv1.HealthStatus, msg string) *agentv1.ComponentHealth {
	return &agentv1.ComponentHealth{Name: name, Status: st, Message: msg}
}

// providerComponent converts a provider's component for the heartbeat. The
// drift detail is kept only with drift: it says what drifted.
func providerComponent(name string, hc *providerv1.ComponentHealth) *agentv1.ComponentHealth {
	c := component(name, providerStatus(hc.GetStatus()), hc.GetMessage())
	if hc.GetDrift() {
		c.Drift, c.DriftDetail = true, truncate(hc.GetDriftDetail(), MaxDriftDetail)
	}
	return c
}

func providerStatus(s providerv1.ComponentStatus) agentv1.HealthStatus {
	switch s {
	case providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY:
		return agentv1.HealthStatus_HEALTH_STATUS_HEALTHY
	case providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED:
		return agentv1.HealthStatus_HEALTH_STATUS_DEGRADED
	default:
		return agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
	}
}
