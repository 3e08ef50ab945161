// Package billing exports hourly per-tenant usage to a billing system as
// meter events shaped like Stripe's meter-events API: one event per tenant,
// meter and closed UTC hour, posted as a form with an idempotency
// identifier derived from (tenant, meter, hour), so a retry or a second
// export of the same hour is deduplicated by the receiver too. The store's
// export ledger (store.RecordExport) remembers what was sent: exporting the
// same hour twice sends nothing new.
//
// An hour is exported once it ended more than Config.Delay ago (time for
// late batches from partitioned agents); usage arriving for an hour after
// its export is kept in the store but not billed.
//
// Only controlplane packages import billing.
package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

// Aggregations: which of an hour's figures a meter exports.
const (
	AggregationSum  = "sum"  // the sum of the hour's records
	AggregationMax  = "max"  // the largest record
	AggregationLast = "last" // the record with the latest time
)

// ActionExport is the audit action of an export pass that recorded
// anything.
const ActionExport = "billing.export"

// Defaults and bounds.
const (
	DefaultInterval    = time.Minute
	DefaultDelay       = 5 * time.Minute
	DefaultMaxAttempts = 5
	DefaultBackoff     = time.Second
	maxBackoff         = 30 * time.Second
	maxRetryAfter      = time.Minute // longer Retry-After values are cut to this
	pageSize           = 500         // candidates read at a time
	maxEventName       = 100         // Stripe's limit
	maxErrorBody       = 300         // bytes of a response body kept as an error
)

// Store is what the exporter needs of the control-plane store.
type Store interface {
	ExportCandidates(ctx context.Context, before time.Time, limit int) ([]store.UsageHour, error)
	RecordExport(ctx context.Context, e store.BillingExport) error
	AppendAudit(ctx context.Context, e auditlog.Entry) (auditlog.Record, error)
}

// Meter says how one meter is exported.
type Meter struct {
	EventName   string // the billing system's meter event name
	Aggregation string // AggregationSum, AggregationMax or AggregationLast
}

// Config configures an Exporter.
type Config struct {
	// Endpoint is the meter-events URL: https, or http to a loopback IP
	// address (tests).
	Endpoint string
	// APIKey is sent as a bearer token. The caller loads it from a secret
	// reference; it is never logged.
	APIKey string
	// Meters lists the exported meters by name; hours of other meters are
	// recorded as skipped.
	Meters map[string]Meter
	// Customers maps a tenant to its billing customer ID. ok=false: the
	// tenant is not billed, and its hours are recorded as skipped; an error
	// records them as failed, to be retried.
	Customers func(ctx context.Context, tenant string) (customerID string, ok bool, err error)
	// Interval between export passes in Run (default 1m).
	Interval time.Duration
	// Delay after an hour's end before it is exported (default 5m).
	Delay time.Duration
	// MaxAttempts per event and pass (default 5). 5xx, 429 and transport
	// errors are retried with exponential backoff and jitter, or after the
	// response's Retry-After (at most a minute); other 4xx are not.
	MaxAttempts int
	// Backoff is the first retry's delay (default 1s), doubled per attempt
	// up to 30s, with ±50% jitter.
	Backoff    time.Duration
	HTTPClient *http.Client // nil: a client with a 30s timeout that follows no redirects
	Store      Store
	Logger     *slog.Logger     // nil discards
	Now        func() time.Time // nil means time.Now
}

// Summary counts what one export pass did.
type Summary struct {
	Sent    int // events the endpoint accepted
	Skipped int // hours recorded as skipped (meter not exported, tenant without a customer)
	Failed  int // events recorded as failed, to be retried by a later pass
}

// Exporter exports usage; see the package documentation.
type Exporter struct {
	cfg      Config
	endpoint string
	sleep    func(ctx context.Context, d time.Duration) error // tests replace it
}

// New validates cfg and returns an exporter.
func New(cfg Config) (*Exporter, error) {
	u, err := url.Parse(cfg.Endpoint)
	switch {
	case err != nil:
		return nil, fmt.Errorf("billing: endpoint: %w", err)
	case u.Host == "" || u.User != nil || u.Fragment != "":
		return nil, fmt.Errorf("billing: endpoint %q: want an absolute https URL without user info or fragment", cfg.Endpoint)
	case u.Scheme == "https":
	case u.Scheme == "http" && loopback(u.Hostname()):
	default:
		return nil, fmt.Errorf("billing: endpoint %q: must be https (http only to a loopback address)", u.Redacted())
	}
	if cfg.APIKey == "" {
		return nil, errors.New("billing: api key is empty")
	}
	for _, c := range cfg.APIKey {
		if c <= ' ' || c > '~' {
			return nil, errors.New("billing: api key has characters other than printable ASCII")
		}
	}
	if len(cfg.Meters) == 0 {
		return nil, errors.New("billing: no meters to export")
	}
	for name, m := range cfg.Meters {
		switch {
		case !store.ValidMeter(name):
			return nil, fmt.Errorf("billing: meters: %q is not a meter name (^[a-z][a-z0-9_.]{0,99}$)", name)
		case m.EventName == "" || len(m.EventName) > maxEventName || !utf8.ValidString(m.EventName):
			return nil, fmt.Errorf("billing: meters: %s: event name %q is empty, longer than %d bytes or not UTF-8", name, m.EventName, maxEventName)
		case m.Aggregation != AggregationSum && m.Aggregation != AggregationMax && m.Aggregation != AggregationLast:
			return nil, fmt.Errorf("billing: meters: %s: aggregation %q is not %s, %s or %s", name, m.Aggregation, AggregationSum, AggregationMax, AggregationLast)
		}
	}
	if cfg.Customers == nil {
		return nil, errors.New("billing: no customer mapping (Customers)")
	}
	if cfg.Store == nil {
		return nil, errors.New("billing: no store")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"interval", &cfg.Interval, DefaultInterval}, {"delay", &cfg.Delay, DefaultDelay}, {"backoff", &cfg.Backoff, DefaultBackoff}} {
		if *d.v < 0 {
			return nil, fmt.Errorf("billing: %s %v is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	switch {
	case cfg.MaxAttempts < 0:
		return nil, fmt.Errorf("billing: max attempts %d is negative", cfg.MaxAttempts)
	case cfg.MaxAttempts == 0:
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{
			Timeout: 30 * time.Second,
			// A redirect is answered as an error, not followed with the
			// key and body to wherever it points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("component", "billing")
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Exporter{cfg: cfg, endpoint: u.String(), sleep: sleepCtx}, nil
}

func loopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Identifier is the idempotency identifier of a tenant's meter event for
// the hour starting at hour: "attache-" and the first 32 hex digits of
// SHA-256("tenant|meter|hour in RFC 3339, UTC").
func Identifier(tenant, meter string, hour time.Time) string {
	sum := sha256.Sum256([]byte(tenant + "|" + meter + "|" + hour.UTC().Format(time.RFC3339)))
	return "attache-" + hex.EncodeToString(sum[:])[:32]
}

// Run exports every Interval, starting at once, until ctx ends; then it
// returns nil. Failed passes are logged and retried at the next tick.
func (e *Exporter) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	for {
		sum, err := e.ExportOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			e.cfg.Logger.Warn("billing export pass stopped", "sent", sum.Sent, "skipped", sum.Skipped, "failed", sum.Failed, "err", err)
		} else if sum != (Summary{}) {
			e.cfg.Logger.Info("billing export pass", "sent", sum.Sent, "skipped", sum.Skipped, "failed", sum.Failed)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// customer is a tenant's customer lookup, once per pass.
type customer struct {
	id  string
	ok  bool
	err error
}

// pass is the state of one ExportOnce.
type pass struct {
	sum       Summary
	customers map[string]customer
	seen      map[candidateKey]bool
	unbilled  map[string]bool // meters logged as not exported
}

type candidateKey struct {
	tenant, meter string
	hour          int64
}

// errUnavailable stops a pass: the endpoint kept failing with retryable
// errors, so the remaining events wait for the next pass.
var errUnavailable = errors.New("billing endpoint unavailable")

// ExportOnce runs one export pass over the closed hours not exported yet:
// new hours oldest first, then earlier failures. It returns what it did.
// The error is non-nil when the pass stopped early: the store failed, ctx
// ended, or the endpoint kept failing with retryable errors (the event that
// exhausted its attempts is recorded as failed, the others are left for the
// next pass).
func (e *Exporter) ExportOnce(ctx context.Context) (Summary, error) {
	now := e.cfg.Now()
	before := now.Add(-e.cfg.Delay).UTC().Truncate(time.Hour)
	p := &pass{customers: map[string]customer{}, seen: map[candidateKey]bool{}, unbilled: map[string]bool{}}
	err := e.run(ctx, p, before)
	if p.sum.Sent+p.sum.Failed+p.sum.Skipped > 0 {
		e.audit(ctx, p.sum, before, err)
	}
	return p.sum, err
}

func (e *Exporter) run(ctx context.Context, p *pass, before time.Time) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hs, err := e.cfg.Store.ExportCandidates(ctx, before, pageSize)
		if err != nil {
			return fmt.Errorf("billing: %w", err)
		}
		fresh := 0
		for _, h := range hs {
			k := candidateKey{h.Tenant, h.Meter, h.Hour.UnixMicro()}
			if p.seen[k] {
				continue
			}
			p.seen[k] = true
			fresh++
			if err := e.exportHour(ctx, p, h); err != nil {
				return err
			}
		}
		// A short page was the last; a page of hours already handled in
		// this pass (failures moved to the back) means nothing new is left.
		if len(hs) < pageSize || fresh == 0 {
			return nil
		}
	}
}

func (e *Exporter) exportHour(ctx context.Context, p *pass, h store.UsageHour) error {
	log := e.cfg.Logger.With("tenant", h.Tenant, "meter", h.Meter, "hour", h.Hour.UTC().Format(time.RFC3339))
	id := Identifier(h.Tenant, h.Meter, h.Hour)
	rec := store.BillingExport{Tenant: h.Tenant, Meter: h.Meter, Hour: h.Hour, Identifier: id, ExportedAt: e.cfg.Now()}

	m, ok := e.cfg.Meters[h.Meter]
	if !ok {
		if !p.unbilled[h.Meter] {
			p.unbilled[h.Meter] = true
			e.cfg.Logger.Debug("meter is not exported; its hours are recorded as skipped", "meter", h.Meter)
		}
		rec.Status, rec.LastError = store.ExportSkipped, "meter is not exported"
		return e.record(ctx, p, rec)
	}
	switch m.Aggregation {
	case AggregationMax:
		rec.Value = h.Max
	case AggregationLast:
		rec.Value = h.Last
	default:
		rec.Value = h.Sum
	}

	c, looked := p.customers[h.Tenant]
	if !looked {
		c.id, c.ok, c.err = e.cfg.Customers(ctx, h.Tenant)
		p.customers[h.Tenant] = c
		switch {
		case c.err != nil:
			e.cfg.Logger.Warn("billing customer lookup failed; the tenant's hours are retried next pass", "tenant", h.Tenant, "err", c.err)
		case !c.ok || c.id == "":
			e.cfg.Logger.Info("tenant has no billing customer; its hours are recorded as skipped", "tenant", h.Tenant)
		}
	}
	switch {
	case c.err != nil:
		rec.Status, rec.LastError = store.ExportFailed, "customer lookup: "+c.err.Error()
		return e.record(ctx, p, rec)
	case !c.ok || c.id == "":
		rec.Status, rec.LastError = store.ExportSkipped, "tenant has no billing customer"
		return e.record(ctx, p, rec)
	}

	form := url.Values{
		"event_name":                  {m.EventName},
		"identifier":                  {id},
		"payload[stripe_customer_id]": {c.id},
		"payload[value]":              {strconv.FormatFloat(rec.Value, 'f', -1, 64)},
		"timestamp":                   {strconv.FormatInt(h.Hour.Unix(), 10)},
	}
	body := form.Encode()
	var (
		lastErr   error
		retryable bool
	)
	for attempt := 1; attempt <= e.cfg.MaxAttempts; attempt++ {
		var wait time.Duration
		rec.Attempts = attempt
		wait, retryable, lastErr = e.post(ctx, id, body)
		if lastErr == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err() // not recorded: the attempt may not have finished
		}
		log.Debug("meter event not accepted", "attempt", attempt, "retryable", retryable, "err", lastErr)
		if !retryable || attempt == e.cfg.MaxAttempts {
			break
		}
		if wait == 0 {
			wait = e.backoff(attempt)
		}
		if err := e.sleep(ctx, wait); err != nil {
			return err
		}
	}
	rec.ExportedAt = e.cfg.Now()
	if lastErr == nil {
		rec.Status = store.ExportSent
		log.Debug("meter event sent", "identifier", id, "attempts", rec.Attempts)
		return e.record(ctx, p, rec)
	}
	rec.Status, rec.LastError = store.ExportFailed, lastErr.Error()
	log.Warn("meter event failed", "attempts", rec.Attempts, "err", lastErr)
	if err := e.record(ctx, p, rec); err != nil {
		return err
	}
	if retryable {
		return fmt.Errorf("billing: %w: %s/%s@%s after %d attempts: %v", errUnavailable, h.Tenant, h.Meter,
			h.Hour.UTC().Format(time.RFC3339), rec.Attempts, lastErr)
	}
	return nil
}

// record stores the ledger row and counts it.
func (e *Exporter) record(ctx context.Context, p *pass, rec store.BillingExport) error {
	if err := e.cfg.Store.RecordExport(ctx, rec); err != nil {
		return fmt.Errorf("billing: %w", err)
	}
	switch rec.Status {
	case store.ExportSent:
		p.sum.Sent++
	case store.ExportSkipped:
		p.sum.Skipped++
	default:
		p.sum.Failed++
	}
	return nil
}

// post sends one event. It returns the endpoint's Retry-After (bounded),
// whether a failure may be retried, and the failure.
func (e *Exporter) post(ctx context.Context, id, body string) (time.Duration, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.endpoint, strings.NewReader(body))
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+e.cfg.APIKey)
	req.Header.Set("Idempotency-Key", id)
	resp, err := e.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, true, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, false, nil
	}
	err = fmt.Errorf("%s: %s", resp.Status, errorMessage(raw))
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		return retryAfter(resp.Header.Get("Retry-After"), e.cfg.Now()), true, err
	}
	return 0, false, err
}

// errorMessage is the message of a Stripe-style error body
// ({"error": {"message": …}}), or the start of the body.
func errorMessage(raw []byte) string {
	var v struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	msg := ""
	if json.Unmarshal(raw, &v) == nil && v.Error.Message != "" {
		msg = v.Error.Message
	} else {
		msg = strings.TrimSpace(string(raw))
	}
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if len(msg) > maxErrorBody {
		n := maxErrorBody
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n] + "…"
	}
	if msg == "" {
		msg = "(no message)"
	}
	return msg
}

// retryAfter parses a Retry-After header (seconds or an HTTP date), bounded
// to maxRetryAfter; 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// backoff is the delay before retry attempt+1: Backoff doubled per attempt,
// capped, with ±50% jitter.
func (e *Exporter) backoff(attempt int) time.Duration {
	d := e.cfg.Backoff << (attempt - 1)
	if d > maxBackoff || d <= 0 {
		d = maxBackoff
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// audit appends one record per pass that recorded anything. A failure to
// audit is logged: the ledger already holds what was exported.
func (e *Exporter) audit(ctx context.Context, sum Summary, before time.Time, passErr error) {
	outcome := auditlog.OutcomeSuccess
	if sum.Failed > 0 || passErr != nil {
		outcome = auditlog.OutcomeFailure
	}
	detail, _ := json.Marshal(map[string]any{
		"sent": sum.Sent, "skipped": sum.Skipped, "failed": sum.Failed,
		"hours_before": before.Format(time.RFC3339), "endpoint": e.endpoint,
	})
	_, err := e.cfg.Store.AppendAudit(context.WithoutCancel(ctx), auditlog.Entry{
		Time: e.cfg.Now(), Actor: "system", Role: "system", Action: ActionExport, Target: e.endpoint,
		Outcome: outcome, Detail: detail,
	})
	if err != nil {
		e.cfg.Logger.Error("audit billing export pass", "err", err)
	}
}
