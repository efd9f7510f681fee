package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// Listen opens the API socket: its directory is created (0755), a stale socket left by a dead
// daemon is removed, one a live daemon answers on is refused, and the socket is made 0600.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("socket path %s exists and is not a socket: refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another snared is answering there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return l, nil
}

// Serve runs the daemon until ctx ends: the API on the config's socket, the sweeper, the trap
// event reader and the trap-port watcher. ready is called once the socket accepts connections.
// On return the socket is removed; enforcement stays in place (Close does not tear it down).
func (d *Daemon) Serve(ctx context.Context, ready func()) error {
	cfg := d.Config()
	l, err := Listen(cfg.Socket)
	if err != nil {
		return err
	}
	return d.ServeListener(ctx, l, ready)
}

// ServeListener is Serve on an already open listener.
func (d *Daemon) ServeListener(ctx context.Context, l net.Listener, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}

	var bg []func()
	run := func(f func()) {
		ch := make(chan struct{})
		bg = append(bg, func() { <-ch })
		go func() { defer close(ch); f() }()
	}

	events, err := d.enf.TrapEvents(ctx)
	if err != nil {
		l.Close()
		return fmt.Errorf("trap events: %w", err)
	}
	run(func() { d.HandleTrapEvents(ctx, events) })
	run(func() { d.sweepLoop(ctx) })
	if d.fleet != nil {
		run(func() {
			if err := d.fleet.Run(ctx); err != nil {
				d.log.Error("fleet stopped; this host enforces its own decisions only", "err", err)
			}
		})
	}
	d.watchMu.Lock()
	d.serveCtx = ctx
	d.watchMu.Unlock()
	d.startTrapWatcher()

	srvErr := make(chan error, 1)
	go func() {
		err := srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		srvErr <- err
	}()
	if ready != nil {
		ready()
	}
	select {
	case <-ctx.Done():
	case err = <-srvErr:
		cancel()
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	_ = srv.Shutdown(shutCtx)
	cancel()
	d.stopTrapWatcher()
	for _, wait := range bg {
		wait()
	}
	d.logEvents(api.Event{Time: time.Now(), Event: api.EventStop, Source: "daemon", Detail: "snared stopped; enforcement stays in place"})
	return err
}
