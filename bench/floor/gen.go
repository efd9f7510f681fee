// Package floor is the bare XDP blocker (floor.c) snare's data path is measured against: one LRU
// hash lookup with a deadline check, nothing else. It also holds drop_all, the live harness's
// ceiling. The bpf2go output is committed; `go generate ./bench/floor` rebuilds it.
package floor

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel Floor floor.c -- -I/usr/include/x86_64-linux-gnu
