// Package packaging holds no code: it is snare's packaging (the systemd unit, the nfpm recipe
// of the Debian package, maintainer scripts) and the tests that check them.
package packaging
