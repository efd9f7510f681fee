package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

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
	srv := natsServerWith(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		TLSConfig: tc, TLS: true, TLSVerify: true, TLSTimeout: 2})
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

// natsOperator is a NATS operator with a system account and one account that may use
// JetStream, made as `nsc` makes them: keys, and JWTs signed by the key above.
type natsOperator struct {
	claims         *jwt.OperatorClaims
	signer         nkeys.KeyPair // the operator's key
	account        nkeys.KeyPair
	accPub, accJWT string
	sysPub, sysJWT string
}

// accountJWT makes an account of the operator okp: its public key and JWT.
func accountJWT(t *testing.T, okp nkeys.KeyPair, name string, jetStream bool) (nkeys.KeyPair, string, string) {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Name = name
	if jetStream {
		ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	return akp, apub, ajwt
}

func newNATSOperator(t *testing.T, name string) *natsOperator {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	opub, _ := okp.PublicKey()
	_, sysPub, sysJWT := accountJWT(t, okp, "SYS", false)
	akp, apub, ajwt := accountJWT(t, okp, "snare", true)
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = name
	oc.SystemAccount = sysPub
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	return &natsOperator{claims: claims, signer: okp, account: akp, accPub: apub, accJWT: ajwt, sysPub: sysPub, sysJWT: sysJWT}
}

// creds writes a .creds file (user JWT and nkey seed) of a new user of the operator's account.
func (o *natsOperator) creds(t *testing.T, dir, user string) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = user
	// The permissions docs/fleet.md gives a snared user of bucket snare.
	uc.Pub.Allow.Add("$JS.API.>", "$KV.snare.>", "$JS.FC.>")
	uc.Sub.Allow.Add("_INBOX.>")
	ujwt, err := uc.Encode(o.account)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	text, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, user+".creds")
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A server in operator (JWT) mode shares between snared hosts whose fleet.creds are of a user of
// its account, and refuses a snared without creds or with a user of another operator, which says
// so in its fleet status and goes on enforcing locally.
func TestFleetCredsRequired(t *testing.T) {
	op := newNATSOperator(t, "snare-op")
	resolver := &server.MemAccResolver{}
	for pub, claims := range map[string]string{op.accPub: op.accJWT, op.sysPub: op.sysJWT} {
		if err := resolver.Store(pub, claims); err != nil {
			t.Fatal(err)
		}
	}
	srv := natsServerWith(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		TrustedOperators: []*jwt.OperatorClaims{op.claims}, AccountResolver: resolver, SystemAccount: op.sysPub})
	url := srv.ClientURL()
	dir := t.TempDir()

	set := func(node, creds string) func(*config.Config) {
		return func(c *config.Config) {
			c.Fleet.Servers = []string{url}
			c.Fleet.Node = node
			c.Fleet.Creds = creds
		}
	}
	stranger := newNATSOperator(t, "other-op")
	for _, tc := range []struct{ name, creds, want string }{
		{"no creds", "", "fleet.creds, which is not set"},
		{"creds of another operator", stranger.creds(t, dir, "stranger"), "refused the user of fleet.creds " + filepath.Join(dir, "stranger.creds")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startFleetHostWith(t, t.TempDir(), set("refused", tc.creds))
			waitFor(t, 10*time.Second, "an error in the fleet status", func() bool { return h.d.FleetStatus().Error != "" })
			time.Sleep(time.Second) // retries go on and keep saying why
			st := h.d.FleetStatus()
			if st.Connected || !strings.Contains(st.Error, "Authorization Violation") || !strings.Contains(st.Error, tc.want) {
				t.Errorf("fleet status: connected %v, error %q; want not connected, the authorization violation and %q", st.Connected, st.Error, tc.want)
			}
			if _, err := h.d.Block(t.Context(), []string{"198.18.0.90"}, "1h", ""); err != nil || !h.enforced("198.18.0.90/32") {
				t.Fatalf("local block without the engine: %v", err)
			}
		})
	}

	a := startFleetHostWith(t, t.TempDir(), set("a", op.creds(t, dir, "a")))
	b := startFleetHostWith(t, t.TempDir(), set("b", op.creds(t, dir, "b")))
	waitConnected(t, a, b)
	if _, err := a.d.Block(t.Context(), []string{"198.18.0.91"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.91/32", "a", a, b)

	// A user without the permissions for its bucket connects, and the status says what it may
	// not do while its decisions wait in the outbox.
	narrow := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		set("narrow", op.creds(t, dir, "narrow"))(c)
		c.Fleet.Bucket = "other"
	})
	waitConnected(t, narrow)
	if _, err := narrow.d.Block(t.Context(), []string{"198.18.0.92"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a permissions error on narrow", func() bool { return narrow.d.FleetStatus().Error != "" })
	if st := narrow.d.FleetStatus(); !strings.Contains(st.Error, `Permissions Violation for Publish to "$KV.other.`) || st.Outbox != 1 {
		t.Errorf("narrow: error %q, outbox %d; want the permissions violation and the block waiting", st.Error, st.Outbox)
	}

	// A user of an account the server does not know yet is refused, and connects once the
	// account is pushed to the server, without a restart.
	late := &natsOperator{}
	late.account, late.accPub, late.accJWT = accountJWT(t, op.signer, "late", true)
	c := startFleetHostWith(t, t.TempDir(), set("c", late.creds(t, dir, "c")))
	waitFor(t, 10*time.Second, "an authorization error on c", func() bool {
		return strings.Contains(c.d.FleetStatus().Error, "Authorization Violation")
	})
	time.Sleep(2 * time.Second) // several refused attempts
	if err := resolver.Store(late.accPub, late.accJWT); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, c)
	if st := c.d.FleetStatus(); st.Error != "" {
		t.Errorf("error after connecting: %q", st.Error)
	}
}

// An embedded server given fleet.tls speaks only TLS and takes only clients whose certificate
// fleet.tls.ca signed; its own snared talks to it in process.
func TestFleetEmbeddedTLS(t *testing.T) {
	dir := t.TempDir()
	caPath, _, ca := writeCert(t, dir, "ca", nil, true)
	tlsOf := func(name string) config.FleetTLS {
		cert, key, _ := writeCert(t, dir, name, &ca, false)
		return config.FleetTLS{CA: caPath, Cert: cert, Key: key}
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Node = "a"
		c.Fleet.Embedded.Listen = listen
		c.Fleet.TLS = tlsOf("a")
	})
	b := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Node = "b"
		c.Fleet.Servers = []string{"tls://" + listen}
		c.Fleet.TLS = tlsOf("b")
	})
	waitConnected(t, a, b)
	if _, err := a.d.Block(t.Context(), []string{"198.18.0.85"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.85/32", "a", a, b)

	// Plain, or TLS with a certificate of another CA: refused.
	_, _, other := writeCert(t, t.TempDir(), "other-ca", nil, true)
	otherCert, otherKey, _ := writeCert(t, dir, "stranger", &other, false)
	for name, set := range map[string]func(*config.Config){
		"plain": func(c *config.Config) { c.Fleet.Servers = []string{"nats://" + listen} },
		"another CA's certificate": func(c *config.Config) {
			c.Fleet.Servers = []string{"tls://" + listen}
			c.Fleet.TLS = config.FleetTLS{CA: caPath, Cert: otherCert, Key: otherKey}
		},
	} {
		h := startFleetHostWith(t, t.TempDir(), func(c *config.Config) { c.Fleet.Node = "x"; set(c) })
		waitFor(t, 10*time.Second, name+": an error in the fleet status", func() bool { return h.d.FleetStatus().Error != "" })
		if st := h.d.FleetStatus(); st.Connected {
			t.Errorf("%s: connected to the embedded server (%+v)", name, st)
		}
		if n := h.d.store.Count(); n != 0 {
			t.Errorf("%s: %d fleet rules applied", name, n)
		}
	}
}
