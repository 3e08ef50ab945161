package opscli

import (
	"encoding/csv"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/textout"
)

func newUsageCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show the usage agents reported, per tenant, meter and hour",
		Long: `Agents report usage samples (meters such as api.requests or storage.bytes) that
the control plane stores exactly once and folds per tenant, meter and UTC
hour: the sum, count and largest of the hour's samples and the latest one.`,
		Example: `  attache usage show --tenant acme
  attache usage show --tenant acme --from 2026-01-01 --to 2026-02-01 --meter api.requests --format csv > jan.csv`,
	}
	cmd.AddCommand(newUsageShowCommand(g))
	return cmd
}

func newUsageShowCommand(g *globals) *cobra.Command {
	var (
		q                apiclient.UsageQuery
		from, to, format string
	)
	cmd := &cobra.Command{
		Use:   "show --tenant TENANT [--from TIME] [--to TIME] [--meter METER] [--format table|csv|json]",
		Short: "Show a tenant's hourly usage",
		Long: `Show a tenant's hourly usage rows that overlap [--from, --to): by default the
last 24 hours. --to is exclusive, so --from 2026-01-01 --to 2026-01-02 is the
first of January. A window spans at most 400 days.

TIME is an RFC 3339 time (2026-01-02T15:04:05Z), a date (2026-01-02, UTC
midnight), "now", or relative to now: -24h, -90m, -7d.

Formats: table (HOUR METER SUM COUNT MAX LAST), csv (a header row, then one
row per tenant, meter and hour, with every figure and last_at, for
spreadsheets and billing reconciliation) and json (the API's answer, as
-o json). Values are printed exactly, without rounding. Needs any role.`,
		Example: `  attache usage show --tenant acme
  attache usage show --tenant acme --from -7d --meter api.requests
  attache usage show --tenant acme --from 2026-01-01 --to 2026-02-01 --format csv > acme-2026-01.csv
  attache usage show --tenant acme --from 2026-01-02T00:00:00Z --to 2026-01-02T06:00:00Z -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if q.Tenant == "" {
				return errors.New("--tenant is required")
			}
			f, err := g.format(cmd, format, "table", "csv", "json")
			if err != nil {
				return err
			}
			now := time.Now()
			if from != "" {
				if q.From, err = parseWhen(from, now); err != nil {
					return fmt.Errorf("--from: %w", err)
				}
			}
			if to != "" {
				if q.To, err = parseWhen(to, now); err != nil {
					return fmt.Errorf("--to: %w", err)
				}
			} else if from != "" {
				q.To = now
			}
			if !q.From.IsZero() && !q.From.Before(q.To) {
				return fmt.Errorf("--from (%s) must be before --to (%s)", textout.Time(q.From), textout.Time(q.To))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			l, err := c.Usage(cmd.Context(), q)
			if err != nil {
				return err
			}
			switch f {
			case "json":
				return textout.JSON(g.stdout, l)
			case "csv":
				return usageCSV(g, l)
			}
			if len(l.Hours) == 0 {
				fmt.Fprintf(g.stderr, "no usage for tenant %s from %s to %s\n", l.Tenant, textout.Time(l.From), textout.Time(l.To))
			}
			rows := make([][]string, 0, len(l.Hours))
			for _, h := range l.Hours {
				rows = append(rows, []string{textout.Time(h.Hour), h.Meter, number(h.Sum), strconv.FormatInt(h.Count, 10), number(h.Max), number(h.Last)})
			}
			return textout.Table(g.stdout, []string{"HOUR", "METER", "SUM", "COUNT", "MAX", "LAST"}, rows)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&q.Tenant, "tenant", "", "the tenant (required)")
	fl.StringVar(&from, "from", "", "start of the window (default: 24h before --to)")
	fl.StringVar(&to, "to", "", "end of the window, exclusive (default: now)")
	fl.StringVar(&q.Meter, "meter", "", "only this meter")
	fl.StringVar(&format, "format", "", "table, csv or json (default: --output)")
	return cmd
}

// format resolves a command's --format against the global --output:
// --format wins, -o json means json, and the two may not disagree.
func (g *globals) format(cmd *cobra.Command, format string, allowed ...string) (string, error) {
	if format == "" {
		return g.output, nil
	}
	ok := false
	for _, a := range allowed {
		ok = ok || a == format
	}
	if !ok {
		return "", fmt.Errorf("--format must be %s, not %q", strings.Join(allowed, ", "), format)
	}
	if g.root.PersistentFlags().Changed("output") && g.output != format {
		return "", fmt.Errorf("--format %s and --output %s disagree; give one", format, g.output)
	}
	return format, nil
}

func usageCSV(g *globals, l apiclient.UsageList) error {
	w := csv.NewWriter(g.stdout)
	_ = w.Write([]string{"tenant", "meter", "hour", "sum", "count", "max", "last", "last_at"})
	for _, h := range l.Hours {
		_ = w.Write([]string{h.Tenant, h.Meter, textout.Time(h.Hour), number(h.Sum), strconv.FormatInt(h.Count, 10),
			number(h.Max), number(h.Last), h.LastAt.UTC().Format(time.RFC3339Nano)})
	}
	w.Flush()
	return w.Error()
}

// number prints a value exactly: integers without exponent or decimals.
func number(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// parseWhen reads a time flag: RFC 3339, a date (UTC midnight), "now", or
// an offset from now ("-24h", "-90m", "-7d"; Go durations plus days).
func parseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil // UTC midnight
	}
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		if days, ok := strings.CutSuffix(s[1:], "d"); ok {
			n, err := strconv.Atoi(days)
			if err == nil && n >= 0 && n <= 100*366 {
				d := time.Duration(n) * 24 * time.Hour
				if s[0] == '-' {
					d = -d
				}
				return now.Add(d), nil
			}
		} else if d, err := time.ParseDuration(s); err == nil {
			return now.Add(d), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: want RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02), now, or an offset such as -24h or -7d", s)
}
