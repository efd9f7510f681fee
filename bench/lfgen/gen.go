package lfgen

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel Lfgen lfgen.c -- -I/usr/include/x86_64-linux-gnu
