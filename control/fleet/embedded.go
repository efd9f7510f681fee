package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/snare-dev/snare/control/api"
)

// embeddedRetry is how often an embedded server that could not start is tried again.
const embeddedRetry = 2 * time.Second

// startEmbeddedRetrying starts the embedded server, trying again until it runs or ctx ends
// (nil): at boot its address may not be up yet, and a port may be held for a while.
func (n *Node) startEmbeddedRetrying(ctx context.Context) *server.Server {
	for {
		srv, err := n.startEmbedded()
		if err == nil {
			return srv
		}
		n.setErr(err)
		n.embeddedLog.Do(func() {
			n.log.Error("embedded NATS server not started; trying again", "err", err, "every", embeddedRetry)
		})
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(embeddedRetry):
		}
	}
}

// startEmbedded runs the JetStream server of fleet.embedded inside snared.
func (n *Node) startEmbedded() (*server.Server, error) {
	e := n.cfg.Embedded
	// The server tells a listener it cannot open only to its logger, then never becomes ready:
	// try the addresses first, so that the reason (in use, not this host's address) is shown.
	for key, addr := range map[string]string{"fleet.embedded.listen": e.Listen, "fleet.embedded.cluster_listen": e.ClusterListen} {
		if addr == "" {
			continue
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		l.Close()
	}
	host, port, err := splitHostPort(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("fleet.embedded.listen: %w", err)
	}
	o := &server.Options{ServerName: n.name, Host: host, Port: port, JetStream: true, StoreDir: n.storeDir,
		NoSigs: true, MaxPayload: 1 << 20}
	// With fleet.tls's certificate the server speaks only TLS, to clients and to the other
	// servers, and with its CA it takes only peers whose certificate that CA signed: without
	// them, whoever reaches the port could write blocks and unblocks for the whole fleet.
	tlsConfig, err := n.embeddedTLS()
	if err != nil {
		return nil, err
	}
	if tlsConfig != nil {
		o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = tlsConfig, true, n.cfg.TLS.CA != "", 2
	}
	if e.ClusterListen != "" {
		ch, cp, err := splitHostPort(e.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("fleet.embedded.cluster_listen: %w", err)
		}
		o.Cluster = server.ClusterOpts{Name: "snare", Host: ch, Port: cp}
		if tlsConfig != nil {
			// A route is client and server at once: both ends show a certificate of the CA,
			// as nats-server's own configuration has it.
			o.Cluster.TLSConfig, o.Cluster.TLSTimeout = tlsConfig.Clone(), 2
			o.Cluster.TLSConfig.ClientAuth = tls.RequireAndVerifyClientCert
			o.Cluster.TLSConfig.RootCAs = o.Cluster.TLSConfig.ClientCAs
		}
		for _, r := range e.Routes {
			o.Routes = append(o.Routes, server.RoutesFromStr(r)...)
		}
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS server on %s: not ready within 10s", e.Listen)
	}
	n.mu.Lock()
	n.embedded = &api.FleetEmbedded{Listen: e.Listen, ClientURL: srv.ClientURL(), ClusterListen: e.ClusterListen,
		Routes: len(o.Routes), StoreDir: n.storeDir, Running: true}
	n.mu.Unlock()
	n.log.Info("embedded NATS JetStream server running", "listen", srv.ClientURL(), "store_dir", n.storeDir)
	return srv, nil
}

// embeddedTLS is the embedded server's TLS configuration from fleet.tls; nil without a
// certificate.
func (n *Node) embeddedTLS() (*tls.Config, error) {
	t := n.cfg.TLS
	if t.Cert == "" {
		return nil, nil
	}
	c, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.Cert, KeyFile: t.Key, CaFile: t.CA, Verify: t.CA != ""})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: fleet.tls: %w", err)
	}
	return c, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, port, nil
}
