// Package nsrun runs a function inside another network namespace.
package nsrun

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// In runs fn on a fresh, locked OS thread that has joined the network namespace target, and
// returns fn's error; the caller's thread is not touched. Child processes fn starts inherit the
// namespace; goroutines it starts do not (setns applies to one thread); sockets it opens stay in
// target after it returns.
func In(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// A fresh goroutine: if its thread cannot be moved back, it stays locked, and the
		// runtime throws the thread away when the goroutine exits.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to own network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
