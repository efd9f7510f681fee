package main

import (
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"time"
)

// wrkResult is what wrk reports.
type wrkResult struct {
	rps    float64
	p99    string
	errors int
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99    = regexp.MustCompile(`(?m)^\s+99%\s+(\S+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func (e *env) wrk(url string, d time.Duration) (wrkResult, error) {
	out, err := e.lab.Run(e.lab.Client().NS, "wrk", "-t", "1", "-c", "16", "-d", fmt.Sprintf("%ds", int(d.Seconds())), "--timeout", "2s", "--latency", url)
	if err != nil {
		return wrkResult{}, err
	}
	var r wrkResult
	if m := wrkRPS.FindStringSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	} else {
		return r, fmt.Errorf("no Requests/sec in wrk output: %s", tail(out))
	}
	if m := wrkP99.FindStringSubmatch(out); m != nil {
		r.p99 = m[1]
	}
	if m := wrkErrors.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			r.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[1])
		r.errors += n
	}
	return r, nil
}

// sectionWeb measures a web server in the host namespace answering the client (wrk) while the
// generator floods the host's other link from a blocked source.
func (e *env) sectionWeb() ([]*table, error) {
	d := 4 * time.Second
	if e.quick {
		d = 2 * time.Second
	}
	t := newTable("Legitimate service under attack", "flood", "filter", "flood dropped pps", "client requests/s", "p99 latency", "errors")
	t.note("A Go HTTP server in the host namespace answers wrk (1 thread, 16 connections, %s) from the client namespace on the client's link, "+
		"while the live-frames generator floods the host's generator link with UDP from the blocked attacker (generator pinned to CPU 0, "+
		"where that link's NAPI runs too). The flood is bounded by the same duration. Limitation: the generator is throttled by the receiver "+
		"on CPU 0 and the server can use CPU 1, so this harness cannot overload the host the way a fixed-rate external flood would; "+
		"read the rows as 'the service keeps working', not as a capacity figure.", d)
	var ln net.Listener
	if err := e.lab.Do(e.lab.Host.NS, func() error {
		var err error
		ln, err = net.Listen("tcp4", "0.0.0.0:8080")
		return err
	}); err != nil {
		return []*table{t}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("snare bench: ok\n"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	url := fmt.Sprintf("http://%s:8080/", e.lab.HostIface("client").Addr4.Addr())
	if _, err := e.setSnareEntries(capacity, false); err != nil {
		return []*table{t}, err
	}
	fixed, _, _ := e.trafficKinds()

	type filter struct {
		name  string
		setup func() (func() (uint64, error), func(), error)
	}
	none := func() (func() (uint64, error), func(), error) {
		return func() (uint64, error) { return 0, nil }, func() {}, nil
	}
	filters := []filter{
		{"none (the stack drops: no UDP listener)", none},
		{"iptables-legacy raw, 1,000 per-address rules", func() (func() (uint64, error), func(), error) {
			if err := e.iptablesRules(1000); err != nil {
				return nil, nil, err
			}
			return e.iptablesDrops, e.iptablesFlush, nil
		}},
		{"snare native, 1,000,000 entries", func() (func() (uint64, error), func(), error) {
			detach, err := e.attach(e.prog, "native")
			return func() (uint64, error) { return e.ethtoolStat(e.lab.Host.NS, e.dut.Name, "rx_queue_0_xdp_drops") }, detach, err
		}},
	}
	r, err := e.wrk(url, d)
	if err != nil {
		return []*table{t}, err
	}
	t.add("no", "-", "-", num(r.rps), r.p99, num(float64(r.errors)))
	for _, f := range filters {
		counter, teardown, err := f.setup()
		if err != nil {
			t.add("yes", f.name, "n/a: "+oneLine(err), "", "", "")
			continue
		}
		c0, _ := counter()
		flood := make(chan error, 1)
		go func() {
			_, err := e.generate(fixed, d+time.Second, false)
			flood <- err
		}()
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		r, werr := e.wrk(url, d)
		el := time.Since(t0)
		ferr := <-flood
		c1, _ := counter()
		teardown()
		if werr != nil || ferr != nil {
			t.add("yes", f.name, "", "n/a: "+oneLine(fmt.Errorf("wrk: %v, flood: %v", werr, ferr)), "", "")
			continue
		}
		dropped := "n/a"
		if c1 > c0 {
			dropped = num(float64(c1-c0) / (el + time.Second).Seconds())
		}
		t.add("yes", f.name, dropped, num(r.rps), r.p99, num(float64(r.errors)))
	}
	return []*table{t}, nil
}
