package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nats-io/jwt/v2"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/control/input"
)

// FleetConfig is the fleet.* section: sharing every decision with the other hosts through a
// NATS JetStream key-value bucket. No servers and no embedded listener: no fleet.
type FleetConfig struct {
	Servers  []string      `koanf:"servers" yaml:"servers"`
	Node     string        `koanf:"node" yaml:"node"` // "": the hostname
	Bucket   string        `koanf:"bucket" yaml:"bucket"`
	Replicas int           `koanf:"replicas" yaml:"replicas"`
	Creds    string        `koanf:"creds" yaml:"creds"`
	TLS      FleetTLS      `koanf:"tls" yaml:"tls"`
	Embedded FleetEmbedded `koanf:"embedded" yaml:"embedded"`
	// MaxPublishPerSecond caps the trap blocks this host publishes a second: a trap flood from
	// random sources must not flood the fleet (manual blocks, unblocks and imports are never
	// shed). What is over it is shed (counted, logged); local enforcement is unaffected.
	MaxPublishPerSecond int `koanf:"max_publish_per_second" yaml:"max_publish_per_second"`
}

// FleetTLS is fleet.tls.*: files for a NATS connection over TLS.
type FleetTLS struct {
	CA   string `koanf:"ca" yaml:"ca"`
	Cert string `koanf:"cert" yaml:"cert"`
	Key  string `koanf:"key" yaml:"key"`
}

// FleetEmbedded is fleet.embedded.*: a JetStream server run inside snared.
type FleetEmbedded struct {
	Listen        string   `koanf:"listen" yaml:"listen"`
	ClusterListen string   `koanf:"cluster_listen" yaml:"cluster_listen"`
	Routes        []string `koanf:"routes" yaml:"routes"`
	StoreDir      string   `koanf:"store_dir" yaml:"store_dir"`
}

// FleetEnabled reports whether this host is part of a fleet.
func (c *Config) FleetEnabled() bool {
	return len(c.Fleet.Servers) > 0 || c.Fleet.Embedded.Listen != ""
}

// FleetNode is this host's name in the fleet: fleet.node, or the hostname.
func (c *Config) FleetNode() string {
	if c.Fleet.Node != "" {
		return c.Fleet.Node
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "snared"
	}
	return h
}

// FleetStoreDir is the embedded server's JetStream directory.
func (c *Config) FleetStoreDir() string {
	if c.Fleet.Embedded.StoreDir != "" {
		return c.Fleet.Embedded.StoreDir
	}
	return filepath.Join(c.StateDir, "nats")
}

var bucketName = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

func (c *Config) validateFleet() error {
	f := c.Fleet
	for _, s := range f.Servers {
		if err := checkURL(s, "nats", "tls", "ws", "wss"); err != nil {
			return bad("fleet.servers", "%v", err)
		}
	}
	if err := input.CheckText("fleet.node", f.Node, 64); err != nil {
		return bad("fleet.node", "%v", err)
	}
	if !bucketName.MatchString(f.Bucket) {
		return bad("fleet.bucket", "%q is not a valid bucket name (letters, digits, '-' and '_')", f.Bucket)
	}
	if f.Replicas < 1 || f.Replicas > 5 {
		return bad("fleet.replicas", "%d is outside 1..5", f.Replicas)
	}
	if f.MaxPublishPerSecond < 1 || f.MaxPublishPerSecond > 1_000_000 {
		return bad("fleet.max_publish_per_second", "%d is outside 1..1000000", f.MaxPublishPerSecond)
	}
	for key, path := range map[string]string{"fleet.creds": f.Creds, "fleet.tls.ca": f.TLS.CA, "fleet.tls.cert": f.TLS.Cert, "fleet.tls.key": f.TLS.Key} {
		if path == "" {
			continue
		}
		if fi, err := os.Stat(path); err != nil {
			return bad(key, "%v", err)
		} else if fi.IsDir() {
			return bad(key, "%s is a directory, not a file", path)
		}
	}
	if f.Creds != "" {
		if err := checkCreds(f.Creds); err != nil {
			return bad("fleet.creds", "%v", err)
		}
	}
	if (f.TLS.Cert == "") != (f.TLS.Key == "") {
		return bad("fleet.tls.cert", "fleet.tls.cert and fleet.tls.key go together: set both or neither")
	}
	e := f.Embedded
	if e.Listen == "" {
		if e.ClusterListen != "" {
			return bad("fleet.embedded.cluster_listen", "needs fleet.embedded.listen: a cluster is of embedded servers")
		}
		if len(e.Routes) > 0 {
			return bad("fleet.embedded.routes", "needs fleet.embedded.listen: a cluster is of embedded servers")
		}
		return nil
	}
	if err := checkHostPort(e.Listen); err != nil {
		return bad("fleet.embedded.listen", "%v", err)
	}
	if e.ClusterListen != "" && f.TLS.Cert != "" && f.TLS.CA == "" {
		return bad("fleet.tls.cert", "with fleet.embedded.cluster_listen, needs fleet.tls.ca too: the servers of a cluster check each other's certificates")
	}
	if e.ClusterListen != "" {
		if err := checkHostPort(e.ClusterListen); err != nil {
			return bad("fleet.embedded.cluster_listen", "%v", err)
		}
	}
	for _, r := range e.Routes {
		if err := checkURL(r, "nats", "nats-route", "tls"); err != nil {
			return bad("fleet.embedded.routes", "%v", err)
		}
	}
	if err := checkCreatableDir(c.FleetStoreDir()); err != nil {
		return bad("fleet.embedded.store_dir", "%v", err)
	}
	return nil
}

// checkCreds reads a NATS credentials file as the client will on every connect: a user JWT and
// that user's nkey seed. A wrong file found here is named now, not as a refusal by the server later.
func checkCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	defer clear(b) // the seed is a secret: do not leave it in memory
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return fmt.Errorf("%s is not a NATS credentials file: %v", path, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return fmt.Errorf("%s is not a NATS credentials file (want a user JWT and its nkey seed, as `nsc generate creds` writes): %v", path, err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("%s holds a user JWT but no user nkey seed: %v", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return fmt.Errorf("%s: nkey seed: %v", path, err)
	}
	if pub != uc.Subject {
		return fmt.Errorf("%s: the nkey seed is of user %s, the JWT of user %s", path, pub, uc.Subject)
	}
	return nil
}

// checkURL checks a server URL: one of schemes, a host and a port.
func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}
	ok := false
	for _, sc := range schemes {
		ok = ok || u.Scheme == sc
	}
	if !ok {
		return fmt.Errorf("%q: scheme %q is not one of %s (want e.g. %s://10.0.0.5:4222)", s, u.Scheme, strings.Join(schemes, ", "), schemes[0])
	}
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("%q: want host and port, e.g. %s://10.0.0.5:4222", s, schemes[0])
	}
	if _, err := input.ParsePort(u.Port()); err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	return nil
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v (want host:port, e.g. 0.0.0.0:4222)", addr, err)
	}
	if _, err := input.ParsePort(port); err != nil {
		return fmt.Errorf("%q: %v", addr, err)
	}
	return nil
}

// checkCreatableDir checks that dir exists as a writable directory or could be created, without
// creating anything (--check-config changes nothing).
func checkCreatableDir(dir string) error {
	p := filepath.Clean(dir)
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("cannot create %s: %s is not a directory", dir, p)
			}
			if err := unix.Access(p, unix.W_OK|unix.X_OK); err != nil {
				return fmt.Errorf("cannot create %s: %s is not writable: %v", dir, p, err)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("cannot create %s: %v", dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("cannot create %s", dir)
		}
		p = parent
	}
}
