// Package bpf holds snare's XDP program (snare.c, snare.h) and the Go bindings bpf2go generates
// from it. The generated files are committed so that `go build` needs no clang; `go generate ./bpf`
// rebuilds them (CI checks they are up to date).
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type block_val -type addr6 -type lpm4_key -type lpm6_key -type config -type scan_state -type trap_event -type counter -type stat_reason -type abi -type limits -type block_flag -type cfg_flag -type trap_proto -type trap_action Snare snare.c -- -I/usr/include/x86_64-linux-gnu
