package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/snare-dev/snare/control/config"
)

// writeCert writes a certificate for 127.0.0.1 signed by ca (self-signed when ca is nil) and its
// key, PEM, into dir; it returns the paths and the parsed pair.
func writeCert(t *testing.T, dir, name string, ca *tls.Certificate, isCA bool) (certPath, keyPath string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: isCA, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, signer = ca.Leaf, ca.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// A server that requires TLS with client certificates refuses a snared without them, which says
// why in its fleet status and goes on enforcing locally; with them it shares.
func TestFleetTLSRequired(t *testing.T) {
	dir := t.TempDir()
	caPath, _, ca := writeCert(t, dir, "ca", nil, true)
	srvCert, srvKey, _ := writeCert(t, dir, "server", &ca, false)
	cliCert, cliKey, _ := writeCert(t, dir, "client", &ca, false)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caPath, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		TLSConfig: tc, TLS: true, TLSVerify: true, TLSTimeout: 2})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(srv.Shutdown)
	url := "tls://" + srv.Addr().String()

	without := startFleetHost(t, url, "without", t.TempDir())
	waitFor(t, 10*time.Second, "an error in the fleet status", func() bool { return without.d.FleetStatus().Error != "" })
	if st := without.d.FleetStatus(); st.Connected || !strings.Contains(strings.ToLower(st.Error), "tls") &&
		!strings.Contains(strings.ToLower(st.Error), "certificate") {
		t.Errorf("without TLS: %+v", st)
	}
	if _, err := without.d.Block(t.Context(), []string{"198.18.0.80"}, "1h", ""); err != nil || !without.enforced("198.18.0.80/32") {
		t.Fatalf("local block without the engine: %v", err)
	}

	set := func(node string) func(*config.Config) {
		return func(c *config.Config) {
			c.Fleet.Servers = []string{url}
			c.Fleet.Node = node
			c.Fleet.TLS = config.FleetTLS{CA: caPath, Cert: cliCert, Key: cliKey}
		}
	}
	a := startFleetHostWith(t, t.TempDir(), set("a"))
	b := startFleetHostWith(t, t.TempDir(), set("b"))
	waitConnected(t, a, b)
	if _, err := a.d.Block(t.Context(), []string{"198.18.0.81"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.81/32", "a", a, b)
}
