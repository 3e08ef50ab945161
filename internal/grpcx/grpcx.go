// Package grpcx holds the gRPC options both ends of the agent connection use:
// the server's hardening against abusive peers (bounded messages, streams,
// handshakes and keepalives; small buffers so one control plane holds many
// idle sessions) and the peer-identity interceptors.
//
// Imported by the control plane and the agent.
package grpcx

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Limits of the agent endpoint.
const (
	// MaxRecvMsgSize bounds any message a peer sends (plans are bounded
	// separately and far below this at submit time).
	MaxRecvMsgSize = 4 << 20
	// MaxSendMsgSize bounds any message the sender builds.
	MaxSendMsgSize = 8 << 20
	// MaxConcurrentStreams per connection: an agent needs its session and an
	// occasional unary call.
	MaxConcurrentStreams = 8
	// HandshakeTimeout bounds the TLS handshake of a new connection.
	HandshakeTimeout = 10 * time.Second
	// KeepaliveMinTime is the shortest ping interval a client may use.
	KeepaliveMinTime = 15 * time.Second
	// bufferSize is the per-connection read/write buffer: idle sessions are
	// the common case, so keep them small.
	bufferSize = 4 << 10
)

// ServerOptions returns the hardened options for the agent endpoint.
func ServerOptions(creds credentials.TransportCredentials, unauthenticated ...string) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxSendMsgSize(MaxSendMsgSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxHeaderListSize(16 << 10),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
		grpc.ReadBufferSize(bufferSize),
		grpc.WriteBufferSize(bufferSize),
		// A fixed window disables BDP probing, which otherwise grows
		// per-connection buffers on busy links.
		grpc.InitialWindowSize(1 << 16),
		grpc.InitialConnWindowSize(1 << 16),
		// Stop returns only after every handler has, so what handlers do
		// on the way out (recording session closes) is not lost.
		grpc.WaitForHandlers(true),
		grpc.ChainUnaryInterceptor(unaryAuth(unauthenticated)),
		grpc.ChainStreamInterceptor(streamAuth(unauthenticated)),
	}
}

// DialOptions returns the options an agent dials the control plane with.
func DialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxSendMsgSize), grpc.MaxCallSendMsgSize(MaxRecvMsgSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             20 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithReadBufferSize(bufferSize),
		grpc.WithWriteBufferSize(bufferSize),
		grpc.WithInitialWindowSize(1 << 16),
		grpc.WithInitialConnWindowSize(1 << 16),
	}
}

type peerIDKey struct{}

// PeerID returns the verified SPIFFE ID of the caller, set by the server's
// interceptors. ok is false for unauthenticated methods.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(peerIDKey{}).(spiffeid.ID)
	return id, ok
}

// WithPeerID returns ctx carrying id, for in-process callers and tests.
func WithPeerID(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, peerIDKey{}, id)
}

// peerSPIFFEID reads the SPIFFE ID from the TLS peer. The certificate chain
// was verified against the trust bundle during the handshake (go-spiffe's
// VerifyPeerCertificate), so only the ID is read here.
func peerSPIFFEID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "connection is not TLS")
	}
	return IDFromState(ti.State)
}

// IDFromState returns the SPIFFE ID of a verified TLS peer.
func IDFromState(st tls.ConnectionState) (spiffeid.ID, error) {
	if len(st.PeerCertificates) == 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "client certificate required: enroll first")
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	return id, nil
}

func allowed(method string, unauthenticated []string) bool {
	for _, m := range unauthenticated {
		if m == method {
			return true
		}
	}
	return false
}

func unaryAuth(unauthenticated []string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if allowed(info.FullMethod, unauthenticated) {
			return handler(ctx, req)
		}
		id, err := peerSPIFFEID(ctx)
		if err != nil {
			return nil, err
		}
		return handler(WithPeerID(ctx, id), req)
	}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w wrappedStream) Context() context.Context { return w.ctx }

func streamAuth(unauthenticated []string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if allowed(info.FullMethod, unauthenticated) {
			return handler(srv, ss)
		}
		id, err := peerSPIFFEID(ss.Context())
		if err != nil {
			return err
		}
		return handler(srv, wrappedStream{ServerStream: ss, ctx: WithPeerID(ss.Context(), id)})
	}
}
