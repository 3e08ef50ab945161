package catalog

import (
	"context"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// v1 is the facade for protocol version 1 (attache.provider.v1): it finds
// the live plugin before each call (restarting it if needed) and bounds every
// unary RPC with the catalog's CallTimeout. Apply streams for as long as it
// takes; its context bounds it. A future protocol version gets its own facade
// beside this one, chosen by the negotiated go-plugin version.
type v1 struct {
	m       *managed
	timeout time.Duration
}

var _ sdk.Provider = (*v1)(nil)

// call returns the live provider and a context bounded by the timeout.
func (f *v1) call(ctx context.Context) (sdk.Provider, context.Context, context.CancelFunc, error) {
	p, err := f.m.live(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, f.timeout)
	return p, cctx, cancel, nil
}

func (f *v1) Describe(ctx context.Context) (*providerv1.DescribeResponse, error) {
	p, ctx, cancel, err := f.call(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return p.Describe(ctx)
}

func (f *v1) Configure(ctx context.Context, req *providerv1.ConfigureRequest) error {
	p, ctx, cancel, err := f.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := p.Configure(ctx, req); err != nil {
		return err
	}
	// Replay this configuration, not the entry's, after a restart.
	f.m.mu.Lock()
	f.m.config = req
	f.m.mu.Unlock()
	return nil
}

func (f *v1) Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error) {
	p, ctx, cancel, err := f.call(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return p.Plan(ctx, step)
}

func (f *v1) Apply(ctx context.Context, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	p, err := f.m.live(ctx)
	if err != nil {
		return nil, err
	}
	return p.Apply(ctx, step, progress)
}

func (f *v1) Health(ctx context.Context) (*providerv1.HealthResponse, error) {
	p, ctx, cancel, err := f.call(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return p.Health(ctx)
}

func (f *v1) Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	p, ctx, cancel, err := f.call(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return p.Usage(ctx, req)
}
