package opscli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/auditlog"

	"attache.dev/attache/internal/textout"
)

// auditPageSize is what the CLI asks for when it pages through the trail.
const auditPageSize = 1000

func newAuditCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read, export and verify the audit trail",
		Long: `The audit trail is a hash chain: every record commits to the one before it,
so altering, deleting or reordering a record breaks every hash after it.
Reading it needs the admin or auditor role; verifying an export needs nothing
but the file.`,
		Example: `  attache audit log --tenant acme --limit 20
  attache audit export > audit.jsonl
  attache audit verify
  attache audit verify --file audit.jsonl`,
	}
	cmd.AddCommand(newAuditLogCommand(g), newAuditExportCommand(g), newAuditVerifyCommand(g))
	return cmd
}

func newAuditLogCommand(g *globals) *cobra.Command {
	var q apiclient.AuditQuery
	cmd := &cobra.Command{
		Use:   "log [--tenant T] [--after SEQ] [--limit N]",
		Short: "Show audit records",
		Example: `  attache audit log
  attache audit log --tenant acme --after 120 --limit 50 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			page, err := c.ListAudit(cmd.Context(), q)
			if err != nil {
				return err
			}
			if g.json() {
				return textout.JSON(g.stdout, page)
			}
			rows := make([][]string, 0, len(page.Records))
			for _, r := range page.Records {
				rows = append(rows, []string{
					strconv.FormatUint(r.Seq, 10), textout.Time(r.Time), r.Actor, r.Role, r.Action,
					orDash(r.Tenant), orDash(r.Target), r.Outcome,
				})
			}
			return textout.Table(g.stdout, []string{"SEQ", "TIME", "ACTOR", "ROLE", "ACTION", "TENANT", "TARGET", "OUTCOME"}, rows)
		},
	}
	cmd.Flags().StringVar(&q.Tenant, "tenant", "", "only records about this tenant")
	cmd.Flags().Uint64Var(&q.After, "after", 0, "only records after this sequence number")
	cmd.Flags().IntVar(&q.Limit, "limit", 100, "at most this many records (1-1000)")
	return cmd
}

func newAuditExportCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Write the whole audit trail as JSON lines",
		Long: `Write every audit record, one JSON object per line, to stdout, up to the head
the server reported when the export began. The head is printed on stderr;
keep it to check the export later with 'attache audit verify --file F --head'.`,
		Example: `  attache audit export > audit.jsonl
  attache audit verify --file audit.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			recs, head, err := fetchAll(cmd.Context(), c)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(g.stdout)
			// Byte-exact Detail: no HTML escaping (records' hashes cover it).
			enc := json.NewEncoder(w)
			enc.SetEscapeHTML(false)
			for _, r := range recs {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "exported %d records, head %d %s\n", len(recs), head.Seq, hex.EncodeToString(head.Hash))
			return nil
		},
	}
}

func newAuditVerifyCommand(g *globals) *cobra.Command {
	var file, headFlag string
	cmd := &cobra.Command{
		Use:   "verify [--file export.jsonl [--head SEQ:HASH]]",
		Short: "Recompute the audit hash chain and check it",
		Long: `Recompute the audit trail's hash chain from the first record and check that it
ends at the head. Without --file it fetches every record from the server and
checks against the head the server reports. With --file it reads an export
offline (no server, no token); --head pins the head you recorded at export
time, which also detects a truncated file.

Exits 1 with "audit record N: <reason>" at the first record that fails.`,
		Example: `  attache audit verify
  attache audit verify --file audit.jsonl
  attache audit verify --file audit.jsonl --head 1234:9f86d081884c7d65...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				recs     []auditlog.Record
				headSeq  uint64
				headHash []byte
			)
			if file != "" {
				var err error
				if recs, err = readExport(file); err != nil {
					return err
				}
				if headFlag != "" {
					if headSeq, headHash, err = parseHead(headFlag); err != nil {
						return err
					}
				}
			} else {
				if headFlag != "" {
					return fmt.Errorf("--head needs --file (the server reports its own head)")
				}
				c, err := g.client()
				if err != nil {
					return err
				}
				var head apiclient.AuditHead
				if recs, head, err = fetchAll(cmd.Context(), c); err != nil {
					return err
				}
				headSeq, headHash = head.Seq, head.Hash
			}
			if p := auditlog.Verify(recs, 0, auditlog.GenesisHash, headSeq, headHash); p != nil {
				return p
			}
			lastSeq, lastHash := uint64(0), auditlog.GenesisHash
			if n := len(recs); n > 0 {
				lastSeq, lastHash = recs[n-1].Seq, recs[n-1].Hash
			}
			_, err := fmt.Fprintf(g.stdout, "audit log verified: %d records, head %d %s\n", len(recs), lastSeq, hashPrefix(lastHash))
			return err
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "verify this export (JSON lines) instead of the server's log")
	cmd.Flags().StringVar(&headFlag, "head", "", "with --file: expected head as SEQ:HEX-HASH")
	return cmd
}

func hashPrefix(h []byte) string {
	s := hex.EncodeToString(h)
	if len(s) > 16 {
		s = s[:16]
	}
	return s
}

// fetchAll pages through the whole trail up to the head reported with the
// first page; records appended meanwhile are left for the next run.
func fetchAll(ctx context.Context, c *apiclient.Client) ([]auditlog.Record, apiclient.AuditHead, error) {
	page, err := c.ListAudit(ctx, apiclient.AuditQuery{Limit: auditPageSize})
	if err != nil {
		return nil, apiclient.AuditHead{}, err
	}
	head := page.Head
	recs := page.Records
	for len(page.Records) > 0 && recs[len(recs)-1].Seq < head.Seq {
		if page, err = c.ListAudit(ctx, apiclient.AuditQuery{After: recs[len(recs)-1].Seq, Limit: auditPageSize}); err != nil {
			return nil, apiclient.AuditHead{}, err
		}
		recs = append(recs, page.Records...)
	}
	for len(recs) > 0 && recs[len(recs)-1].Seq > head.Seq {
		recs = recs[:len(recs)-1]
	}
	return recs, head, nil
}

// readExport reads JSON lines written by 'audit export'; blank lines are
// skipped, anything else that is not a record is an error naming the line.
func readExport(path string) ([]auditlog.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var recs []auditlog.Record
	r := bufio.NewReader(f)
	for line := 1; ; line++ {
		b, err := r.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			var rec auditlog.Record
			if derr := dec.Decode(&rec); derr != nil {
				return nil, fmt.Errorf("%s line %d: not an audit record: %v", path, line, derr)
			}
			recs = append(recs, rec)
		}
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
}

func parseHead(s string) (uint64, []byte, error) {
	seqStr, hashStr, ok := strings.Cut(s, ":")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if !ok || err != nil || seq == 0 {
		return 0, nil, fmt.Errorf("--head %q: want SEQ:HEX-HASH", s)
	}
	h, err := hex.DecodeString(hashStr)
	if err != nil || len(h) != 32 {
		return 0, nil, fmt.Errorf("--head %q: hash must be 64 hex digits", s)
	}
	return seq, h, nil
}
