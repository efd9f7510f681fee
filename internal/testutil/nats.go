package testutil

import (
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// NATSUser makes a NATS user signed by a new account: its JWT and its nkey seed, what a
// credentials file holds.
func NATSUser(t testing.TB) (token string, seed []byte) {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, err := ukp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	if token, err = jwt.NewUserClaims(upub).Encode(akp); err != nil {
		t.Fatal(err)
	}
	if seed, err = ukp.Seed(); err != nil {
		t.Fatal(err)
	}
	return token, seed
}
