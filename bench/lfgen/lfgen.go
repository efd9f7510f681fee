// Package lfgen is the benchmark's traffic generator: BPF_PROG_TEST_RUN with
// BPF_F_TEST_XDP_LIVE_FRAMES runs lfgen.c on copies of one template frame, and every
// XDP_REDIRECT really transmits the frame out of the generator's veth (the mechanism of
// xdp-trafficgen; this machine has no pktgen module). The bpf2go output is committed;
// `go generate ./bench/lfgen` rebuilds it.
//
// The run is one huge test-run syscall ended by a signal: each call swaps the XDP dispatcher
// with a synchronize_rcu (tens of ms), so short calls would measure that instead of packets.
// cilium/ebpf's Program.Run restarts on EINTR, hence the raw syscall here.
package lfgen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// Packet describes a template frame.
type Packet struct {
	Kind   string // "udp4", "syn4", "udp6"
	Src    netip.Addr
	Dst    netip.Addr
	DPort  uint16
	SrcMAC net.HardwareAddr
	DstMAC net.HardwareAddr
}

// Frame builds the template frame: Ethernet, IPv4 (ihl 5) or IPv6, then UDP (IPv4: checksum 0,
// which lets the generator rewrite the source cheaply) or a TCP SYN, padded to 60 bytes.
func Frame(p Packet) ([]byte, error) {
	smac, dmac := p.SrcMAC, p.DstMAC
	if smac == nil {
		smac = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	}
	if dmac == nil {
		dmac = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	}
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4}
	var (
		net4   *layers.IPv4
		net6   *layers.IPv6
		netL   gopacket.NetworkLayer
		ls     = []gopacket.SerializableLayer{eth}
		l4     layers.IPProtocol
		is6    = p.Kind == "udp6"
		srcOK  = p.Src.IsValid() && p.Src.Is6() == is6 && !p.Src.Is4In6()
		dstOK  = p.Dst.IsValid() && p.Dst.Is6() == is6 && !p.Dst.Is4In6()
		sport  = layers.UDPPort(40000)
		dport  = p.DPort
		isSYN  = p.Kind == "syn4"
		isUDP4 = p.Kind == "udp4"
	)
	if !is6 && !isSYN && !isUDP4 {
		return nil, fmt.Errorf("unknown packet kind %q (want udp4, syn4 or udp6)", p.Kind)
	}
	if !srcOK || !dstOK {
		return nil, fmt.Errorf("%s packet needs %s addresses, got %s -> %s", p.Kind, map[bool]string{true: "IPv6", false: "IPv4"}[is6], p.Src, p.Dst)
	}
	l4 = layers.IPProtocolUDP
	if isSYN {
		l4 = layers.IPProtocolTCP
	}
	if is6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		net6 = &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: p.Src.AsSlice(), DstIP: p.Dst.AsSlice(), NextHeader: l4}
		netL = net6
		ls = append(ls, net6)
	} else {
		net4 = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, SrcIP: p.Src.AsSlice(), DstIP: p.Dst.AsSlice(), Protocol: l4}
		netL = net4
		ls = append(ls, net4)
	}
	if isSYN {
		tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Seq: 1, Window: 65535}
		if err := tcp.SetNetworkLayerForChecksum(netL); err != nil {
			return nil, err
		}
		ls = append(ls, tcp)
	} else {
		udp := &layers.UDP{SrcPort: sport, DstPort: layers.UDPPort(dport)}
		if err := udp.SetNetworkLayerForChecksum(netL); err != nil {
			return nil, err
		}
		ls = append(ls, udp, gopacket.Payload(make([]byte, 18)))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, fmt.Errorf("build %s frame: %w", p.Kind, err)
	}
	b := buf.Bytes()
	if isUDP4 {
		// UDP checksum 0 ("none", allowed for IPv4): the generator rewrites sources without it.
		b[14+20+6], b[14+20+7] = 0, 0
	}
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b, nil
}

// Config is one generator run.
type Config struct {
	Ifindex  int           // generator-side interface, in the calling thread's network namespace
	Frame    []byte        // template frame
	RandBase netip.Addr    // with RandBits > 0: IPv4 sources are RandBase | random low bits
	RandBits int           // 0: fixed source (IPv4 only otherwise)
	SelfDrop bool          // drop every frame in the generator: measures the generator alone
	Duration time.Duration // how long to generate (the one bound every run has)
	CPU      int           // CPU the generator thread is pinned to
	Batch    uint32        // frames per flush (default 256)
}

// Result of a run.
type Result struct {
	Frames  uint64        // frames the generator program produced
	Elapsed time.Duration // wall time of the run
}

// PPS is frames per second.
func (r Result) PPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Frames) / r.Elapsed.Seconds()
}

// NsPerFrame is the wall time per frame.
func (r Result) NsPerFrame() float64 {
	if r.Frames == 0 {
		return 0
	}
	return float64(r.Elapsed.Nanoseconds()) / float64(r.Frames)
}

// Run loads the generator and runs it for cfg.Duration on the calling goroutine's OS thread,
// which it locks and pins to cfg.CPU for the run (both undone afterwards). Call it in the
// generator's network namespace (netlab.Lab.Do), where cfg.Ifindex is resolved.
func Run(cfg Config) (Result, error) {
	if cfg.Duration <= 0 || cfg.Duration > 5*time.Minute {
		return Result{}, fmt.Errorf("generator duration %s out of range (0, 5m]", cfg.Duration)
	}
	if len(cfg.Frame) < 14 {
		return Result{}, errors.New("template frame shorter than an Ethernet header")
	}
	if cfg.Batch == 0 {
		cfg.Batch = 256
	}
	spec, err := LoadLfgen()
	if err != nil {
		return Result{}, fmt.Errorf("load generator spec: %w", err)
	}
	var mask, base uint32
	if cfg.RandBits > 0 {
		if !cfg.RandBase.Is4() || cfg.RandBits > 24 {
			return Result{}, fmt.Errorf("random sources need an IPv4 base and at most 24 bits, got %s/%d", cfg.RandBase, cfg.RandBits)
		}
		mask = 1<<cfg.RandBits - 1
		b := cfg.RandBase.As4()
		base = (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) &^ mask
	}
	selfDrop := uint32(0)
	if cfg.SelfDrop {
		selfDrop = 1
	}
	for name, v := range map[string]uint32{"out_ifindex": uint32(cfg.Ifindex), "rand_mask": mask, "rand_base": base, "self_drop": selfDrop} {
		if err := spec.Variables[name].Set(v); err != nil {
			return Result{}, fmt.Errorf("set generator %s: %w", name, err)
		}
	}
	var objs LfgenObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return Result{}, fmt.Errorf("load generator: %w", err)
	}
	defer objs.Close()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return Result{}, fmt.Errorf("get cpu affinity: %w", err)
	}
	var set unix.CPUSet
	set.Set(cfg.CPU)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return Result{}, fmt.Errorf("pin generator to cpu %d: %w", cfg.CPU, err)
	}
	defer unix.SchedSetaffinity(0, &old)

	// The kernel checks for pending signals between batches and returns EINTR: a SIGURG
	// (which the Go runtime already handles and ignores unless it asked for a preemption)
	// sent to this thread ends the run. Keep sending until the run is over, in case one
	// arrives just before the syscall starts.
	pid, tid := unix.Getpid(), unix.Gettid()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-done:
			return
		case <-time.After(cfg.Duration):
		}
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()

	attr := testRunAttr{
		progFD:     uint32(objs.Lfgen.FD()),
		dataSizeIn: uint32(len(cfg.Frame)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&cfg.Frame[0]))),
		repeat:     ^uint32(0),
		flags:      bpfFTestXDPLiveFrames,
		batchSize:  cfg.Batch,
	}
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var runErr error
	for time.Now().Before(deadline) {
		_, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno == unix.EINTR {
			continue // our stop signal, or a stray one early: the loop condition decides
		}
		if errno != 0 {
			runErr = fmt.Errorf("BPF_PROG_TEST_RUN live frames: %w", errno)
			break
		}
		// repeat ran out (4G frames): go on until the deadline.
	}
	elapsed := time.Since(start)
	close(done)
	<-stopped
	runtime.KeepAlive(cfg.Frame)
	if runErr != nil {
		return Result{}, runErr
	}
	var frames uint64
	if err := objs.Frames.Get(&frames); err != nil {
		return Result{}, fmt.Errorf("read generator frame count: %w", err)
	}
	return Result{Frames: frames, Elapsed: elapsed}, nil
}

const (
	bpfProgTestRun        = 10     // BPF_PROG_TEST_RUN
	bpfFTestXDPLiveFrames = 1 << 1 // BPF_F_TEST_XDP_LIVE_FRAMES
)

// testRunAttr is the test member of union bpf_attr.
type testRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}
