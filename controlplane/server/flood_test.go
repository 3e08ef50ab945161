package server

import (
	"bytes"
	"crypto/tls"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// flood opens n gRPC streams on one raw HTTP/2 connection authenticated as
// sv, without waiting for the server's stream quota, and returns the
// server's advertised MAX_CONCURRENT_STREAMS and how many streams it refused.
func flood(t *testing.T, addr string, sv *x509svid.SVID, n int) (advertised uint32, refused int) {
	t.Helper()
	cert := tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
	for _, c := range sv.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // this probe is about what the server allows
		NextProtos:         []string{"h2"},
		MinVersion:         tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", addr},
		{":path", "/attache.agent.v1.AgentService/Session"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := range n {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return advertised, refused // deadline: the server said all it will
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
				advertised = v
			}
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				refused++
			}
		case *http2.GoAwayFrame:
			return advertised, refused
		}
	}
}
