// Package sdk is what a provider plugin builds on: the Go Provider interface
// that mirrors the attache.provider.v1 contract, Serve for a provider's main
// (hashicorp/go-plugin, gRPC only, with the Handshake), the gRPC server and
// client adapters, an in-process server/client pair over real gRPC for tests,
// strict parameter decoding and the InvalidArgument errors that name a field.
//
// Imported by provider packages and their commands (providers/...), by
// providers/providertest and by the agent's plugin host (agent/catalog). It
// imports nothing from agent/, controlplane/ or internal/, so a provider
// binary links only this package, the generated protocol and its own code.
package sdk

import (
	"context"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
)

// Provider is the Go face of the attache.provider.v1 contract. Providers
// implement it; the agent's catalog, sdk.Client and the in-process pair
// expose it, so callers see the same interface whether the provider runs in
// a plugin process or in-process.
//
// Every action must be idempotent (applying a step twice equals applying it
// once, the second time with only NOOP changes), Plan must change nothing,
// parameters a provider refuses must come back as InvalidArgument naming the
// field (see InvalidArgument and Params), and Apply must stop promptly when
// its context is cancelled.
type Provider interface {
	// Describe names the provider, its version and its actions.
	Describe(ctx context.Context) (*providerv1.DescribeResponse, error)
	// Configure hands over the provider's configuration and tenant context.
	Configure(ctx context.Context, req *providerv1.ConfigureRequest) error
	// Plan returns the changes applying step would make, changing nothing.
	Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error)
	// Apply carries step out, reporting progress through progress (which
	// may be nil). A step that fails after the provider has started acting
	// returns a result with state FAILED and a message saying why and what
	// was rolled back; an error means the step could not be attempted
	// (invalid parameters, cancellation, broken transport).
	Apply(ctx context.Context, step *providerv1.Step, progress ProgressFunc) (*providerv1.ApplyResult, error)
	// Health reports the provider's components.
	Health(ctx context.Context) (*providerv1.HealthResponse, error)
	// Usage reports per-tenant meter samples.
	Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error)
}

// ProgressFunc receives Apply's progress events. It must not block for long.
type ProgressFunc func(*providerv1.Progress)

// Report sends a progress event through fn if fn is not nil; providers call
// it so they need not check for a nil ProgressFunc.
func Report(fn ProgressFunc, resource, message string) {
	if fn != nil {
		fn(&providerv1.Progress{Resource: resource, Message: message})
	}
}
