package sdk

import (
	"context"
	"os"
	"sync/atomic"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Handshake is the go-plugin handshake between the agent (agent/catalog) and
// a provider binary (Serve). It is the only definition; host and plugin both
// use this value. The magic cookie only keeps a provider binary from being
// run by hand by mistake; it is not a security measure (the host pins each
// binary's SHA-256 and talks to it over AutoMTLS).
//
// ProtocolVersion history — bump it only for a change the other side cannot
// handle (a new RPC or a new optional field is not one; see the compatibility
// rules in protocol/attache/provider/v1/provider.proto), add a line here, and
// teach the host to serve both versions (plugin.ClientConfig.VersionedPlugins):
//
//   - 1 (2026-11-23): first version. Contract attache.provider.v1
//     (Describe, Configure, Plan, Apply with streamed progress, Health,
//     Usage), gRPC only, plugin name "provider". Magic cookie
//     ATTACHE_PROVIDER_PLUGIN=5c1b7d0e-attache-provider-v1.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "ATTACHE_PROVIDER_PLUGIN",
	MagicCookieValue: "5c1b7d0e-attache-provider-v1",
}

// PluginName is the name under which a provider binary serves, and the host
// dispenses, the ProviderService.
const PluginName = "provider"

// GRPCPlugin is the go-plugin glue: on the plugin side it registers Impl as
// the ProviderService; on the host side it returns a *Client. It refuses
// go-plugin's net/rpc protocol.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the provider served; nil on the host side.
	Impl Provider
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the provider with the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	providerv1.RegisterProviderServiceServer(s, NewServer(p.Impl))
	return nil
}

// GRPCClient returns a *Client over the plugin's connection.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return NewClient(c), nil
}

// PluginSet is the set a host passes in plugin.ClientConfig.Plugins.
func PluginSet() plugin.PluginSet {
	return plugin.PluginSet{PluginName: &GRPCPlugin{}}
}

// Serve serves p as a provider plugin over gRPC and returns when the host
// ends the plugin. Call it from a provider's main after building p; a binary
// started by hand (without the host's magic cookie) prints a notice and
// exits with status 1.
//
// A plugin does not outlive its host: go-plugin kills its plugins when the
// host exits, but a host killed outright (kill -9, the OOM killer) runs no
// cleanup. Serve therefore checks every ParentPollInterval whether the
// process was re-parented; once it was, it stops serving gracefully — the
// calls in flight were cancelled when the host's connection went away, and
// get up to OrphanGrace to finish their cleanup — and the process exits.
func Serve(p Provider) {
	var srv atomic.Pointer[grpc.Server]
	stop := watchParent(os.Getppid, ParentPollInterval, func() {
		if s := srv.Load(); s != nil {
			go s.GracefulStop() // Serve returns once it has stopped
		}
		time.Sleep(OrphanGrace)
		os.Exit(1)
	})
	defer stop()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: p}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			s := plugin.DefaultGRPCServer(opts)
			srv.Store(s)
			return s
		},
	})
}

// ParentPollInterval is how often a serving plugin checks that its host is
// still its parent; OrphanGrace is how long an orphaned plugin lets its
// cancelled calls clean up before it exits.
const (
	ParentPollInterval = time.Second
	OrphanGrace        = 30 * time.Second
)

// watchParent calls orphaned, once and on its own goroutine, when getppid
// no longer returns what it returned at first (the parent died and the
// process was re-parented). It checks every interval until stop is called.
func watchParent(getppid func() int, interval time.Duration, orphaned func()) (stop func()) {
	first := getppid()
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if getppid() != first {
				orphaned()
				return
			}
		}
	}()
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			close(done)
		}
	}
}
