package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"

	"github.com/snare-dev/snare/internal/testutil"
)

// credsText is a .creds file of a user JWT and a seed, as `nsc generate creds` writes it.
func credsText(t *testing.T, tok string, seed []byte) string {
	t.Helper()
	text, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	return string(text)
}

func TestFleetConfigDefaults(t *testing.T) {
	c, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.FleetEnabled() {
		t.Error("fleet enabled by default")
	}
	host, _ := os.Hostname()
	if c.Fleet.Bucket != "snare" || c.Fleet.Replicas != 1 || c.Fleet.MaxPublishPerSecond != 1000 || c.FleetNode() != host {
		t.Errorf("defaults: %+v, node %q", c.Fleet, c.FleetNode())
	}
	if got := c.FleetStoreDir(); got != filepath.Join(c.StateDir, "nats") {
		t.Errorf("store dir %q", got)
	}
}

func TestFleetConfigEnvAndFile(t *testing.T) {
	tok, seed := testutil.NATSUser(t)
	creds := writeFile(t, "fleet.creds", credsText(t, tok, seed))
	file := writeFile(t, "snare.yaml", `fleet:
  servers: ["nats://198.18.0.5:4222"]
  node: web-1
  creds: `+creds+`
  embedded:
    listen: 127.0.0.1:4222
    routes: ["nats-route://198.18.0.6:6222"]
`)
	c, err := Load(LoadOptions{File: file, Env: []string{
		"SNARE_FLEET_SERVERS=nats://198.18.0.7:4222,nats://198.18.0.8:4222",
		"SNARE_FLEET_EMBEDDED_CLUSTER_LISTEN=0.0.0.0:6222",
		"SNARE_FLEET_EMBEDDED_STORE_DIR=" + filepath.Join(t.TempDir(), "js"),
		"SNARE_FLEET_REPLICAS=3",
		"SNARE_FLEET_MAX_PUBLISH_PER_SECOND=50",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"nats://198.18.0.7:4222", "nats://198.18.0.8:4222"}; !reflect.DeepEqual(c.Fleet.Servers, want) {
		t.Errorf("servers %q, want %q", c.Fleet.Servers, want)
	}
	if !c.FleetEnabled() || c.FleetNode() != "web-1" || c.Fleet.Replicas != 3 || c.Fleet.MaxPublishPerSecond != 50 ||
		c.Fleet.Embedded.ClusterListen != "0.0.0.0:6222" || c.Fleet.Creds != creds ||
		!reflect.DeepEqual(c.Fleet.Embedded.Routes, []string{"nats-route://198.18.0.6:6222"}) {
		t.Errorf("fleet: %+v", c.Fleet)
	}
}

func TestFleetConfigBadValues(t *testing.T) {
	file := writeFile(t, "plain", "x")
	cases := []struct {
		yaml string
		want []string
	}{
		{"fleet: {servers: ['10.0.0.5:4222']}", []string{"fleet.servers", `"10.0.0.5:4222" is not a URL`}},
		{"fleet: {servers: ['nats://10.0.0.5']}", []string{"fleet.servers", "want host and port"}},
		{"fleet: {servers: ['nats://10.0.0.5:99999']}", []string{"fleet.servers", "out of range"}},
		{"fleet: {servers: ['http://10.0.0.5:4222']}", []string{"fleet.servers", `scheme "http"`}},
		{"fleet: {creds: /nonexistent/snare.creds}", []string{"fleet.creds", "no such file"}},
		{"fleet: {tls: {ca: /nonexistent/ca.pem}}", []string{"fleet.tls.ca", "no such file"}},
		{"fleet: {tls: {cert: " + file + "}}", []string{"fleet.tls.cert", "set both or neither"}},
		{"fleet: {bucket: 'a.b'}", []string{"fleet.bucket", `"a.b" is not a valid bucket name`}},
		{"fleet: {replicas: 0}", []string{"fleet.replicas", "0 is outside 1..5"}},
		{"fleet: {max_publish_per_second: 0}", []string{"fleet.max_publish_per_second", "outside"}},
		{"fleet: {node: \"a\\nb\"}", []string{"fleet.node"}},
		{"fleet: {embedded: {listen: 4222}}", []string{"fleet.embedded.listen", "host:port"}},
		{"fleet: {embedded: {routes: ['nats-route://10.0.0.6:6222']}}", []string{"fleet.embedded.routes", "needs fleet.embedded.listen"}},
		{"fleet: {embedded: {listen: '127.0.0.1:4222', routes: ['10.0.0.6']}}", []string{"fleet.embedded.routes"}},
		{"fleet: {embedded: {listen: '127.0.0.1:4222', cluster_listen: 'x'}}", []string{"fleet.embedded.cluster_listen", "host:port"}},
		{"fleet: {embedded: {listen: '127.0.0.1:4222', store_dir: " + file + "/nats}}", []string{"fleet.embedded.store_dir", "cannot create", "is not a directory"}},
		{"fleet: {tls: {cert: " + file + ", key: " + file + "}, embedded: {listen: '127.0.0.1:4222', cluster_listen: '127.0.0.1:6222'}}",
			[]string{"fleet.tls.cert", "needs fleet.tls.ca too"}},
	}
	tok, seed := testutil.NATSUser(t)
	otherTok, otherSeed := testutil.NATSUser(t)
	other := credsText(t, otherTok, otherSeed)
	full := credsText(t, tok, seed)
	jwtOnly := full[:strings.Index(full, "*")] // the JWT block without the seed block
	for _, c := range []struct{ content, want string }{
		{"x\n", "is not a NATS credentials file"},
		{jwtOnly, "holds a user JWT but no user nkey seed"},
		{jwtOnly + other[strings.Index(other, "*"):], "the nkey seed is of user"}, // another user's seed
	} {
		cases = append(cases, struct {
			yaml string
			want []string
		}{"fleet: {creds: " + writeFile(t, "bad.creds", c.content) + "}", []string{"fleet.creds", "bad.creds", c.want}})
	}
	cases = append(cases, struct {
		yaml string
		want []string
	}{"fleet: {creds: " + t.TempDir() + "}", []string{"fleet.creds", "is a directory"}})
	for _, tc := range cases {
		t.Run(tc.yaml, func(t *testing.T) {
			f := writeFile(t, "bad.yaml", tc.yaml+"\n")
			_, err := Load(LoadOptions{File: f})
			wantErr(t, err, append(tc.want, f)...)
		})
	}
	_, err := Load(LoadOptions{Env: []string{"SNARE_FLEET_SERVERS=nats//x"}})
	wantErr(t, err, "fleet.servers", "SNARE_FLEET_SERVERS")
}
