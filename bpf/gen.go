package bpf

// The C source is compiled with Debian's clang 14 and libbpf-dev headers; the
// generated Go bindings and objects are committed so that building the
// exporter needs no C toolchain. vmlinux.h was produced with
// `bpftool btf dump file /sys/kernel/btf/vmlinux format c`.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type conn -type sock_rec -type file_rec -type conn_rec -type read_run -type read_progress -type insert_run -type log_head tracker tracker.c -- -I./include
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type ct_lookup lookup lookup.c -- -I./include
