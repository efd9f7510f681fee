package control

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/config"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Three snared run the embedded servers as a JetStream cluster (R3); losing one, the other two
// keep sharing. With fleet.tls, clients and routes speak TLS with certificates of one CA.
func TestFleetEmbeddedCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-server JetStream cluster takes seconds to form")
	}
	t.Run("plain", func(t *testing.T) { testEmbeddedCluster(t, nil) })
	t.Run("tls", func(t *testing.T) {
		dir := t.TempDir()
		caPath, _, ca := writeCert(t, dir, "ca", nil, true)
		testEmbeddedCluster(t, func(name string) config.FleetTLS {
			cert, key, _ := writeCert(t, dir, name, &ca, false)
			return config.FleetTLS{CA: caPath, Cert: cert, Key: key}
		})
	})
}

// testEmbeddedCluster runs the cluster test, with tlsOf giving each host's fleet.tls if set.
func testEmbeddedCluster(t *testing.T, tlsOf func(name string) config.FleetTLS) {
	scheme, routeScheme := "nats", "nats-route"
	if tlsOf != nil {
		scheme, routeScheme = "tls", "tls"
	}
	var client, route [3]int
	for i := range 3 {
		client[i], route[i] = freePort(t), freePort(t)
	}
	hosts := make([]*fleetHost, 3)
	for i := range 3 {
		var routes, servers []string
		for j := range 3 {
			servers = append(servers, fmt.Sprintf("%s://127.0.0.1:%d", scheme, client[j]))
			if j != i {
				routes = append(routes, fmt.Sprintf("%s://127.0.0.1:%d", routeScheme, route[j]))
			}
		}
		hosts[i] = startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
			c.Fleet.Node = fmt.Sprintf("n%d", i)
			c.Fleet.Replicas = 3
			c.Fleet.Servers = servers
			c.Fleet.Embedded.Listen = fmt.Sprintf("127.0.0.1:%d", client[i])
			c.Fleet.Embedded.ClusterListen = fmt.Sprintf("127.0.0.1:%d", route[i])
			c.Fleet.Embedded.Routes = routes
			if tlsOf != nil {
				c.Fleet.TLS = tlsOf(c.Fleet.Node)
			}
		})
	}
	for _, h := range hosts {
		waitFor(t, 60*time.Second, "connected", func() bool { return h.d.FleetStatus().Connected })
	}
	ctx := context.Background()
	if _, err := hosts[0].d.Block(ctx, []string{"198.18.0.90"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.90/32", "n0", hosts...)

	hosts[2].stop() // its embedded server goes with it
	if _, err := hosts[1].d.Block(ctx, []string{"198.18.0.91"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "shared by two of three", func() bool {
		_, ok := hosts[0].rule(t, "198.18.0.91/32")
		return ok
	})
	shared(t, "198.18.0.91/32", "n1", hosts[1], hosts[0])
}
