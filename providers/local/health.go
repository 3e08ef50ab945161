package local

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"sort"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Health reports the root directory and each tenant's app.
func (p *Provider) Health(ctx context.Context) (*providerv1.HealthResponse, error) {
	e, err := p.env()
	if err != nil {
		return &providerv1.HealthResponse{Components: []*providerv1.ComponentHealth{{
			Name: "root", Status: providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY, Message: "not configured",
		}}}, nil
	}
	resp := &providerv1.HealthResponse{}
	root := &providerv1.ComponentHealth{Name: "root", Status: providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY, Message: e.rootDir}
	if _, err := e.root.Stat("."); err != nil {
		root.Status, root.Message = providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY, err.Error()
	}
	resp.Components = append(resp.Components, root)
	client := &http.Client{Timeout: time.Second}
	for _, t := range p.listDir(e, "apps") {
		r, err := readRecord(e, t, "current.json")
		if err != nil || r == nil {
			continue
		}
		c := &providerv1.ComponentHealth{Name: "app/" + t, Tenant: t, Status: providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY, Message: r.Version + " healthy"}
		switch {
		case !p.alive(r):
			c.Status, c.Message = providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY, r.Version+" is not running"
		default:
			if err := probe(ctx, client, r.HealthURL); err != nil {
				c.Status, c.Message = providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED, r.Version+": "+err.Error()
			}
		}
		resp.Components = append(resp.Components, c)
	}
	return resp, nil
}

// Usage reports storage_bytes (the size of tenants/<tenant>) per tenant.
func (p *Provider) Usage(_ context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	e, err := p.env()
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, t := range req.GetTenants() {
		want[t] = true
	}
	resp := &providerv1.UsageResponse{}
	now := timestamppb.Now()
	for _, t := range p.listDir(e, "tenants") {
		if len(want) > 0 && !want[t] {
			continue
		}
		var size int64
		_ = fs.WalkDir(e.root.FS(), tenantDir(t), func(_ string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					size += fi.Size()
				}
			}
			return nil
		})
		resp.Samples = append(resp.Samples, &providerv1.UsageSample{Tenant: t, Meter: "storage_bytes", Value: float64(size), Time: now})
	}
	return resp, nil
}

// listDir lists the valid tenant names that are directories in dir.
func (p *Provider) listDir(e *env, dir string) []string {
	ents, err := fs.ReadDir(e.root.FS(), dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			p.log.Warn("list", "dir", dir, "err", err)
		}
		return nil
	}
	var out []string
	for _, d := range ents {
		if d.IsDir() && validTenant(d.Name()) == nil {
			out = append(out, d.Name())
		}
	}
	sort.Strings(out)
	return out
}
