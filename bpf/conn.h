// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The map of recorded connections, shared by tracker.c, which fills it, and
// lookup.c, which marks the connections it has looked up in conntrack.

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

// Life cycle of an entry in the conns map. Written by the tracepoint (and by
// user space when it seeds connections found at start-up).
enum conn_state {
	CONN_CONNECTING = 1,  // connect() called, handshake not finished
	CONN_ESTABLISHED = 2, // handshake finished, tuple valid
	CONN_CLOSED = 3,      // was established, socket now closed
	CONN_FAILED = 4,      // closed without ever being established
};

// struct conn is the value of the conns map.
// Addresses are in network byte order, ports and everything else in host
// byte order. IPv4 addresses occupy the first 4 bytes of an address field.
struct conn {
	__u64 cgroup_id; // cgroup v2 id of the connecting task (or socket)
	__u64 sock_ino;  // socket inode; only set for seeded entries
	__u32 pid;       // thread group id of the connecting process
	__u32 netns;     // network namespace inode of the socket
	__u8 family;     // AF_INET or AF_INET6
	__u8 ct_looked;  // 1 once lookup_ct (lookup.c) looked the connection up
	__u8 state;      // enum conn_state
	__u8 seeded;     // 1 when user space created the entry at start-up
	__u16 sport;     // local port
	__u16 dport;     // remote port
	__u8 saddr[16];  // local address
	__u8 daddr[16];  // remote (dialled) address
	char comm[16];   // command name of the thread group leader
};

// conns: key u64 socket cookie (unique for the kernel's lifetime), value
// struct conn. The tracepoint inserts at CLOSE -> SYN_SENT and updates the
// entry afterwards; user space deletes entries in state CLOSED or FAILED once
// a scrape has read them. max_entries is set by user space at load time;
// entries are allocated as they are used, so a large bound costs nothing
// until connections fill it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");
