//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Kernel side of connection_exporter: records every actively opened TCP
// connection of every process in every network namespace.
//
// One BTF tracepoint on inet_sock_set_state sees each socket open
// (CLOSE -> SYN_SENT, in the connecting process) and close (-> CLOSE). It
// does as little as it can there, on the connecting process's time: it
// appends a record of the opening (owner, socket) or of the close (tuple,
// final counts) to its CPU's part of a log, an array no other CPU writes.
// A scrape runs read_changes, which first drains the logs into the conns
// map (openings of every CPU, then closes), then walks the map in the kernel:
// it follows each open connection's socket (the handshake's end and its
// tuple, the live counts) and copies out only the entries whose version
// moved since it last copied them. A scrape where nothing changed costs a
// walk of the map and no copy. When a CPU's log is full, the tracepoint
// writes into the map itself, as the drain would.
//
// Entries are never deleted here: user space reads them on a scrape and
// deletes closed and failed ones after it has counted them, so a connection
// that lives between two scrapes is still seen.
//
// An iter/tcp program lists the sockets that existed before the tracepoint
// was attached, so that user space can seed the table at start-up.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define EEXIST 17

// Kernel TCP states (include/net/tcp_states.h).
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

// Life cycle of an entry in the conns map. Written by the tracepoint (and by
// user space when it seeds connections found at start-up).
enum conn_state {
	CONN_CONNECTING = 1,  // connect() called, handshake not finished
	CONN_ESTABLISHED = 2, // handshake finished, tuple valid
	CONN_CLOSED = 3,      // was established, socket now closed
	CONN_FAILED = 4,      // closed without ever being established
};

// struct tcp_counts is what the kernel counts of one connection
// (struct tcp_sock): bytes of sequence space the peer acknowledged (the SYN
// and, once acknowledged, the FIN included) and received (the peer's FIN
// included), segments retransmitted, and the smoothed round-trip time in
// microseconds shifted left by 3, as tcp_sock keeps it.
struct tcp_counts {
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 retrans;
	__u32 srtt_us;
};

// struct conn is the value of the conns map.
// Addresses are in network byte order, ports and everything else in host
// byte order. IPv4 addresses occupy the first 4 bytes of saddr and daddr.
//
// read_changes writes entries: the opening and the close from the logs, the
// tuple once the handshake is over, the live counts, and what it copied out
// of them. The tracepoint writes the opening and the close itself when its
// CPU's log is full, so it may write the same fields as the drain; state
// is changed with an atomic exchange or compare-and-swap, so that the close
// always wins over the walk.
struct conn {
	__u64 sk;        // the socket's address while it is open, for read_changes; 0 once closed
	__u64 opened;    // the opening's time (struct open_rec); 0 for a first opening or a seed
	__u64 closed;    // the time of the close applied last (struct close_rec); 0 before one
	__u32 pid;       // thread group id of the connecting process
	__u32 netns;     // network namespace inode of the socket
	__u32 state;     // enum conn_state
	__u16 family;    // AF_INET or AF_INET6
	__u8 seeded;     // 1 when user space created the entry at start-up
	__u8 gone;       // 1 when a walk found the open socket gone (see follow)
	__u16 sport;     // local port
	__u16 dport;     // remote port
	__u8 saddr[16];  // local address
	__u8 daddr[16];  // remote (dialled) address
	char comm[16];   // command name of the thread group leader
	__u32 version;   // bumped after each change that user space must see
	__u32 reported;  // version when the read_changed iterator last wrote it
	struct tcp_counts live;  // as read_changes last read them from the open socket
	struct tcp_counts final; // as the tracepoint read them at the close
	struct tcp_counts acct;  // as read_changes last copied them out: user space counts the growth
};

// conns: key u64 socket cookie (unique for the kernel's lifetime), value
// struct conn. read_changes inserts an entry for each opening it drains
// from the logs and writes the end of each close, bumping version; it
// follows the open socket in between (the handshake's end, the live
// counts), bumping version for what changed, and writes reported; user
// space deletes entries in state CLOSED or FAILED once a scrape has read
// them. max_entries is set by user space at load time.
// Entries are preallocated: an insert takes one from a per-CPU free list and
// a delete puts it back, where an allocating map would allocate on every
// connection and free each released entry after RCU grace periods. The
// price is about 170 bytes of kernel memory per entry from the start. A
// preallocated entry can be reused as soon as it is deleted, even while a
// program that looked it up still writes to it; user space deletes only
// entries whose connection is over, which no program writes to again,
// except when a socket connects again after a failed attempt, in the
// instant a scrape releases that failure.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

// Indexes of the counters array.
enum counter {
	COUNTER_CONNS_FULL = 0, // an insert into conns failed: the attempt is lost
	COUNTER_RECORDED = 1,   // an opening went into conns, the log being full
	COUNTER_CHANGED = 2,    // a close went into conns, the log being full
	COUNTER_CLOSE_LOST = 3, // a close found neither room in the log nor its entry
	COUNTER_MAX = 4,
};

// counters: key u32 enum counter, value u64 per CPU. Written by the
// tracepoint and read_changes, summed over CPUs by user space. Monotonic;
// never reset. Openings and closes that go through the logs are counted by
// the logs' heads instead.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Keep struct definitions in the object so that bpf2go emits Go types.
const struct conn *unused_conn __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

// tcp_counts_on is set by user space at load time: read the kernel's
// counts of connections (at the close here; live ones in read_changes).
const volatile __u32 tcp_counts_on = 0;

// changed publishes the fields just written: read_changes reads the version
// before the fields, so the atomic add, a full barrier, orders them.
static __always_inline void changed(struct conn *c)
{
	__sync_fetch_and_add(&c->version, 1);
}

// read_tuple copies the socket's addresses and ports. The tracepoint's
// socket is an argument the verifier trusts, read_changes's one it cast
// from the address in the entry: their fields are loaded directly
// (relocated by CO-RE all the same), not copied by helper calls.
static __always_inline void read_tuple(struct conn *c, const struct sock *sk)
{
	c->sport = sk->__sk_common.skc_num;
	c->dport = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (c->family == AF_INET) {
		__builtin_memcpy(c->saddr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(c->daddr, &sk->__sk_common.skc_daddr, 4);
	} else {
		__builtin_memcpy(c->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(c->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	}
}

// read_counts copies what the kernel counts of a connection.
static __always_inline void read_counts(struct tcp_counts *t, const struct tcp_sock *tp)
{
	t->bytes_acked = tp->bytes_acked;
	t->bytes_received = tp->bytes_received;
	t->retrans = tp->total_retrans;
	t->srtt_us = tp->srtt_us;
}

// struct open_rec is the log's record of an opening: what the entry of the
// connection starts with. Same conventions as struct conn.
struct open_rec {
	__u64 cookie;
	__u64 sk;
	__u64 at; // bpf_ktime_get_ns() when the socket connects again, else 0
	__u32 pid;
	__u32 netns;
	__u16 family;
	__u16 pad[3];
	char comm[16];
};

// struct close_rec is the log's record of a close: the end of the entry.
struct close_rec {
	__u64 cookie;
	__u64 at;    // the socket's tcp_clock_cache: a time between its opening and the next
	__u32 state; // CONN_CLOSED or CONN_FAILED
	__u16 sport;
	__u16 dport;
	__u8 saddr[16]; // IPv4: the first 4 bytes
	__u8 daddr[16];
	struct tcp_counts final;
};

// log_cpus and log_slots are set by user space at load time: the number of
// possible CPUs, and the records each CPU's part of a log holds (a power of
// two).
const volatile __u32 log_cpus = 1;
const volatile __u32 log_slots = 1024;

// log_key is the key of the n-th record of CPU cpu's part of a log.
static __always_inline __u32 log_key(__u32 cpu, __u32 n)
{
	return cpu * log_slots + (n & (log_slots - 1));
}

// opens and closes: key u32 cpu * log_slots + slot, value struct open_rec
// or struct close_rec. CPU n writes only the part from n * log_slots, in
// turn, the n-th record of its part going to slot n % log_slots; read_changes
// takes the records out. max_entries is set by user space at load time.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct open_rec);
} opens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct close_rec);
} closes SEC(".maps");

// struct log_head is how far a CPU's parts of the logs are written and
// read. Counts are of records since the programs were loaded, and wrap
// around. The tracepoint writes the first cache line, on its CPU only;
// read_changes the second (and reads the first with atomic fetches, which
// take the line from the tracepoint's CPU once a drain).
struct log_head {
	__u32 opens;  // opening records written and complete
	__u32 closes; // close records written and complete
	__u32 pad1[14];
	__u32 opens_read;  // opening records read_changes is done with
	__u32 closes_read; // close records read_changes is done with
	__u32 closes_to;   // the closes a drain takes: its snapshot of closes
	__u32 pad2[13];
};

// heads: key u32 cpu, value struct log_head. User space reads it through a
// memory mapping to tell whether anything was logged since a read.
// max_entries is set by user space at load time.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct log_head);
} heads SEC(".maps");

const struct log_head *unused_log_head __attribute__((unused));

// stores_in_order is set by user space at load time where the CPU makes
// stores visible to other CPUs in the order a program makes them (x86): a
// plain store then publishes a record as well as a locked instruction,
// which costs about 40 ns on the development VM. Elsewhere an exchange,
// which orders the stores before it, does.
const volatile __u32 stores_in_order = 0;

// publish_head stores n in the head of a CPU's part of a log, after the
// record it counts.
static __always_inline void publish_head(__u32 *head, __u32 n)
{
	if (stores_in_order) {
		asm volatile("" ::: "memory"); // the compiler keeps the order too
		*(volatile __u32 *)head = n;
	} else {
		__sync_lock_test_and_set(head, n);
	}
}

// new_conn makes the entry of an opening.
static __always_inline void new_conn(struct conn *n, const struct open_rec *r)
{
	__builtin_memset(n, 0, sizeof(*n));
	n->sk = r->sk;
	n->opened = r->at;
	n->pid = r->pid;
	n->netns = r->netns;
	n->family = r->family;
	n->state = CONN_CONNECTING;
	__builtin_memcpy(n->comm, r->comm, sizeof(n->comm));
}

// apply_open inserts the entry of an opening into conns. A socket that
// connects again after a failed attempt keeps its cookie, and its entry
// until a scrape releases it: the entry follows the new attempt from
// there, unless it already follows a later one or holds a later close (the
// tracepoint wrote the attempt's close into the entry while this opening
// waited in a log). An entry the seed made from a socket it found takes
// the opening's owner: this opening is that socket's, and tells it better.
// Entries are changed in place, never replaced: a program that holds an
// entry writes to it, and a replaced one goes back to the free list.
static __always_inline void apply_open(const struct open_rec *r)
{
	struct conn n;
	new_conn(&n, r);
	long err = bpf_map_update_elem(&conns, &r->cookie, &n, BPF_NOEXIST);
	if (err == -EEXIST) {
		struct conn *c = bpf_map_lookup_elem(&conns, &r->cookie);
		if (!c)
			return;
		if (c->seeded) {
			c->pid = r->pid;
			c->netns = r->netns;
			__builtin_memcpy(c->comm, r->comm, sizeof(c->comm));
			c->seeded = 0;
			changed(c);
			return;
		}
		if (r->at <= c->opened || r->at <= c->closed)
			return;
		c->sk = r->sk;
		c->opened = r->at;
		c->gone = 0;
		__sync_lock_test_and_set(&c->state, CONN_CONNECTING);
		changed(c);
		return;
	}
	if (err)
		count(COUNTER_CONNS_FULL);
}

// apply_close writes the end of a connection into its entry, unless the
// close is of an attempt before the one the entry follows. It reports
// whether the entry was there.
static __always_inline int apply_close(const struct close_rec *r)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &r->cookie);
	if (!c)
		return 0; // not a connection this program saw open
	if (r->at < c->opened)
		return 1;
	c->sport = r->sport;
	c->dport = r->dport;
	if (c->family == AF_INET) {
		__builtin_memcpy(c->saddr, r->saddr, 4);
		__builtin_memcpy(c->daddr, r->daddr, 4);
	} else {
		__builtin_memcpy(c->saddr, r->saddr, 16);
		__builtin_memcpy(c->daddr, r->daddr, 16);
	}
	c->final = r->final;
	c->closed = r->at;
	c->sk = 0;
	__sync_lock_test_and_set(&c->state, r->state); // wins over follow
	changed(c);
	return 1;
}

// fill_open writes the record of sk's opening. Process context: the
// connecting task is current. Its fields load straight from the task, which
// the verifier trusts, rather than through helper calls.
//
// A socket that had a cookie before (again, after an earlier attempt
// failed) has its opening timed, so that the drain can tell the earlier
// attempt's close from this one's; a first opening needs no time, as no
// close of that socket comes before it. The clock costs about 50 ns on the
// development VM.
static __always_inline void fill_open(struct open_rec *r, const struct sock *sk, __u16 family, __u64 had_cookie)
{
	struct task_struct *task = bpf_get_current_task_btf();
	r->cookie = bpf_get_socket_cookie((void *)sk);
	r->sk = (__u64)sk;
	r->at = had_cookie ? bpf_ktime_get_ns() : 0;
	r->pid = task->tgid;
	r->netns = sk->__sk_common.skc_net.net->ns.inum;
	r->family = family;
	__builtin_memcpy(r->comm, task->group_leader->comm, sizeof(r->comm));
}

// fill_close writes the record of sk's close. From SYN_SENT the attempt
// failed; from any other state the connection was established, whether or
// not read_changes saw it so. The kernel released the source port just
// before this transition and cleared skc_num, but the port it had bound is
// still in inet_sport, which only a later disconnect clears; the addresses
// and the remote port are still there too. An attempt that failed before a
// port was chosen has none (or, on a socket whose earlier attempt failed,
// that attempt's port).
//
// Its time is the last the kernel took for the socket (tcp_clock_cache,
// Linux 4.20 or later), rather than the clock's: the kernel takes one as it
// builds the SYN, after the opening, and none after the close, so it falls
// between the attempt's opening and the next one's, which is all the drain
// asks of it. An attempt that fails before its SYN (no route, no port, no
// memory) closes with the time of the attempt before: after a failed
// attempt, the drain ignores such a close, and the walk ends the entry
// later (see follow).
static __always_inline void fill_close(struct close_rec *r, const struct sock *sk, __u64 cookie, int oldstate)
{
	struct tcp_sock *tp = bpf_rdonly_cast((void *)sk, bpf_core_type_id_kernel(struct tcp_sock));
	r->cookie = cookie;
	if (bpf_core_field_exists(tp->tcp_clock_cache))
		r->at = tp->tcp_clock_cache;
	else
		r->at = bpf_ktime_get_ns();
	r->state = oldstate == TCP_SYN_SENT ? CONN_FAILED : CONN_CLOSED;
	r->sport = __builtin_bswap16(tp->inet_conn.icsk_inet.inet_sport);
	r->dport = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (sk->__sk_common.skc_family == AF_INET) {
		__builtin_memcpy(r->saddr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(r->daddr, &sk->__sk_common.skc_daddr, 4);
	} else {
		__builtin_memcpy(r->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(r->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	}
	if (tcp_counts_on)
		read_counts(&r->final, tp);
	else
		__builtin_memset(&r->final, 0, sizeof(r->final));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, const int oldstate, const int newstate)
{
	// Two transitions matter, the opening and the close; every TCP socket
	// of the host passes here several times in its life, so the others
	// leave first. The handshake's end is read_changes's to find.
	int opening = oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT;
	if (!opening && newstate != TCP_CLOSE)
		return 0;

	// A socket this program never saw open has no cookie yet (asking for
	// one would make it one): the server side of every connection, which
	// closes too, leaves here without a record. Closes of other sockets
	// that have one are dropped by read_changes, which finds no entry.
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	if (!opening && !cookie)
		return 0;

	__u32 cpu = bpf_get_smp_processor_id();
	struct log_head *h = bpf_map_lookup_elem(&heads, &cpu);
	if (!h)
		return 0;

	if (opening) {
		__u16 family = sk->__sk_common.skc_family;
		if (sk->sk_protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
			return 0;
		__u32 head = h->opens;
		if (head - *(volatile __u32 *)&h->opens_read >= log_slots) {
			// The log is full: into the map now.
			struct open_rec local = {};
			fill_open(&local, sk, family, cookie);
			apply_open(&local);
			count(COUNTER_RECORDED);
			return 0;
		}
		__u32 idx = log_key(cpu, head);
		struct open_rec *r = bpf_map_lookup_elem(&opens, &idx);
		if (!r)
			return 0;
		fill_open(r, sk, family, cookie);
		publish_head(&h->opens, head + 1);
		return 0;
	}

	__u32 head = h->closes;
	if (head - *(volatile __u32 *)&h->closes_read >= log_slots) {
		// The log is full: into the entry now, if a drain made it. One
		// whose opening is still in the log is left to follow.
		struct close_rec local = {};
		fill_close(&local, sk, cookie, oldstate);
		count(apply_close(&local) ? COUNTER_CHANGED : COUNTER_CLOSE_LOST);
		return 0;
	}
	__u32 idx = log_key(cpu, head);
	struct close_rec *r = bpf_map_lookup_elem(&closes, &idx);
	if (!r)
		return 0;
	fill_close(r, sk, cookie, oldstate);
	publish_head(&h->closes, head + 1);
	return 0;
}

// struct sock_rec is one record written by the dump_tcp iterator.
// Same conventions as struct conn.
struct sock_rec {
	__u64 cookie;
	__u64 sk; // the socket's address, for read_changes
	__u64 sock_ino;
	__u32 netns;
	__u16 family;
	__u8 state; // kernel TCP state
	__u8 pad;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 pad2;
};

const struct sock_rec *unused_sock_rec __attribute__((unused));

// dump_tcp writes one struct sock_rec per TCP socket of the network
// namespace the reader is in (kernel 5.9+). User space reads the records at
// start-up to find connections opened before the tracepoint was attached.
// Fields are loaded directly, not copied by helper calls: the walk visits
// every socket of every namespace, both ends of each connection.
SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;

	struct sock_rec r = {};
	r.family = skc->skc_family;
	if (r.family != AF_INET && r.family != AF_INET6)
		return 0;
	r.state = skc->skc_state;
	r.netns = skc->skc_net.net->ns.inum;
	r.sport = skc->skc_num;
	r.dport = __builtin_bswap16(skc->skc_dport);
	if (r.family == AF_INET) {
		__builtin_memcpy(r.saddr, &skc->skc_rcv_saddr, 4);
		__builtin_memcpy(r.daddr, &skc->skc_daddr, 4);
	} else {
		__builtin_memcpy(r.saddr, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(r.daddr, &skc->skc_v6_daddr, 16);
	}

	// Only full sockets have a cookie worth keeping, an owner and a cgroup;
	// time-wait and request sockets are not connections anyone holds open.
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (tp) {
		struct sock *sk = (struct sock *)tp;
		r.cookie = bpf_get_socket_cookie(sk);
		r.sk = (__u64)sk;
		struct socket *sock = sk->sk_socket;
		if (sock && sock->file)
			r.sock_ino = sock->file->f_inode->i_ino;
	}

	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

// dump_cookies writes the cookie (a __u64) of every full TCP socket of the
// reader's network namespace: the seed's second look, which only asks which
// sockets are still there.
SEC("iter/tcp")
int dump_cookies(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	__u64 cookie = bpf_get_socket_cookie((struct sock *)tp);
	bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	return 0;
}

// struct file_rec is one record written by the dump_files iterator.
struct file_rec {
	__u64 sock_ino; // inode of the socket
	__u32 pid;      // thread group id of the process holding it
	__u32 pad;
	char comm[16]; // command name of its thread group leader
};

const struct file_rec *unused_file_rec __attribute__((unused));

// dump_files writes one struct file_rec per file descriptor of an IPv4 or
// IPv6 stream socket, of every process the reader's PID namespace holds
// (kernel 5.11+). It names the owners of connections opened before start-up,
// which reading every descriptor's link through procfs did at a system call
// each. Threads that share their process's descriptors are skipped by the
// iterator itself.
SEC("iter/task_file")
int dump_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock || sock->type != SOCK_STREAM || !sock->sk)
		return 0;
	__u16 family = sock->sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct file_rec r = {};
	r.sock_ino = file->f_inode->i_ino;
	r.pid = task->tgid;
	bpf_probe_read_kernel_str(r.comm, sizeof(r.comm), task->group_leader->comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

// struct conn_rec is an entry of conns with its key, as read_changes
// copies it out.
struct conn_rec {
	__u64 cookie;
	struct conn conn;
};

const struct conn_rec *unused_conn_rec __attribute__((unused));

// changes: key u32 index, value struct conn_rec (host byte order, as struct
// conn), a ring. read_changes writes the n-th entry it copies out in a read
// at index n modulo the ring's size, and publishes n in progress as it goes;
// user space reads the entries through a memory mapping while the walk goes
// on, and publishes how far it has read, so that the walk writes only over
// entries already read. max_entries is set by user space at load time.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct conn_rec);
} changes SEC(".maps");

// struct read_progress is how far a read of changes went, shared with
// user space through a memory mapping while read_changes runs. Counts are
// of entries since the read began, and wrap around. Each count has a cache
// line of its own: the two sides write them from different CPUs.
struct read_progress {
	__u32 written; // entries written into changes and complete
	__u32 pad1[15];
	__u32 read; // set by user space: entries it is done with
	__u32 pad2[15];
};

const struct read_progress *unused_read_progress __attribute__((unused));

// progress: key u32 0, value struct read_progress.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct read_progress);
} progress SEC(".maps");

// Flags of struct read_run.
#define READ_COUNTS 1 // read the live counts of open connections

// struct read_run is the packet read_changes is run with, and what it
// leaves there for user space.
struct read_run {
	__u32 start;      // set by user space: entries copied by the read's earlier runs
	__u32 size;       // set by user space: the length of changes
	__u32 flags;      // set by user space: READ_*
	__u32 count;      // entries copied by the read so far
	__u32 more;       // 1 when the run stopped because changes was full
	__u32 total;      // entries in conns, when more is 0
	__u32 connecting; // entries whose handshake is not over or whose socket is gone, when more is 0
	__u32 pad;
};

const struct read_run *unused_read_run __attribute__((unused));

// PUBLISH_EVERY is how many entries the walk copies between two updates of
// progress->written, each a locked instruction.
#define PUBLISH_EVERY 64

struct walk {
	struct read_progress *p;
	__u32 next;      // count of the next entry to copy
	__u32 published; // progress->written as the walk last set it
	__u32 read;      // progress->read as the walk last saw it
	__u32 size;
	__u32 more;
	__u32 flags;      // READ_*
	__u32 connecting; // entries the next walk must look at again
	__u32 drained;    // 1 when this run drained the logs before walking
};

// publish tells user space that the entries before w->next are complete.
// The atomic add orders it after the copies, on any architecture.
static __always_inline void publish(struct walk *w)
{
	__sync_fetch_and_add(&w->p->written, w->next - w->published);
	w->published = w->next;
}


// follow reads an open connection's socket through the address in its
// entry: the tuple once the handshake is over, and the live counts when
// asked, bumping the version for what changed. The address is not a
// pointer the verifier trusts: it is cast read-only, which makes every load
// from it safe to fault. TCP sockets are freed SLAB_TYPESAFE_BY_RCU, and
// the walk runs under RCU: the memory is a struct tcp_sock for as long as
// the walk reads it, but it may be another socket's by then if this one was
// freed, whose close the tracepoint would have seen unless it was detached.
// The socket's cookie, read after the fields, tells: a new socket's is
// zero or another one.
static __always_inline void follow(const __u64 *key, struct conn *c, struct walk *w)
{
	__u64 addr = c->sk;
	__u32 st = c->state;
	int counts = (w->flags & READ_COUNTS) != 0;
	if (!addr || (st != CONN_CONNECTING && !(counts && st == CONN_ESTABLISHED)))
		return;
	struct tcp_sock *tp = bpf_rdonly_cast((void *)addr, bpf_core_type_id_kernel(struct tcp_sock));
	struct sock *sk = (struct sock *)tp;
	__u8 kst = sk->__sk_common.skc_state;
	struct tcp_counts t = {};
	if (counts)
		read_counts(&t, tp);
	// A socket that is gone, or closed, is one whose close the tracepoint
	// logged (it runs before the kernel stores the state) after this read's
	// drain took its snapshot: the next read's drain writes the end. If a
	// walk after the next drain still finds the entry open, the socket
	// closed while the tracepoint was detached (or a close found its log
	// full and its entry not yet made): the connection ends there, as last
	// seen. Only runs that drained count: a read's later runs walk again
	// without draining.
	__u64 now = sk->__sk_common.skc_cookie.counter;
	if (now != *key || kst == TCP_CLOSE) {
		w->connecting++; // the next read walks
		if (!w->drained)
			return;
		if (!c->gone) {
			c->gone = 1;
			return;
		}
		if (__sync_val_compare_and_swap(&c->state, st, st == CONN_CONNECTING ? CONN_FAILED : CONN_CLOSED) == st) {
			c->final = counts && now == *key ? t : c->live;
			c->sk = 0;
			changed(c);
		}
		return;
	}
	if (c->gone)
		c->gone = 0; // seen closed before its state was stored: it was opening
	if (st == CONN_CONNECTING) {
		if (kst == TCP_SYN_SENT) {
			w->connecting++;
			return; // the handshake goes on
		}
		read_tuple(c, sk);
		if (__sync_val_compare_and_swap(&c->state, CONN_CONNECTING, CONN_ESTABLISHED) != CONN_CONNECTING)
			return; // closed meanwhile: the close wrote it all
		changed(c);
	}
	if (counts && (t.bytes_acked != c->live.bytes_acked || t.bytes_received != c->live.bytes_received ||
		       t.retrans != c->live.retrans || t.srtt_us != c->live.srtt_us)) {
		c->live = t;
		changed(c);
	}
}

// copy_changed follows an open connection's socket, then copies its entry
// into the next element of changes if it changed since it was last copied,
// and marks it copied. It stops the walk when changes holds only entries
// user space has not read yet.
static long copy_changed(struct bpf_map *map, const __u64 *key, struct conn *c, struct walk *w)
{
	follow(key, c, w);
	// A fetch rather than a plain load, for its barrier: the fields
	// copied below are at least as new as this version.
	__u32 v = __sync_fetch_and_add(&c->version, 0);
	if (v == c->reported)
		return 0;
	if (w->next - w->read >= w->size) {
		publish(w); // what is written so far, before waiting is judged
		w->read = *(volatile __u32 *)&w->p->read;
		if (w->next - w->read >= w->size) {
			w->more = 1;
			return 1;
		}
	}
	__u32 idx = w->next % w->size;
	struct conn_rec *r = bpf_map_lookup_elem(&changes, &idx);
	if (!r) {
		w->more = 1;
		return 1;
	}
	r->cookie = *key;
	__builtin_memcpy(&r->conn, c, sizeof(r->conn));
	c->reported = v;
	c->acct = r->conn.state == CONN_CLOSED || r->conn.state == CONN_FAILED ? r->conn.final : r->conn.live;
	w->next++;
	if (w->next - w->published >= PUBLISH_EVERY)
		publish(w);
	return 0;
}

// struct drain is where a drain of one CPU's part of a log stands.
struct drain {
	__u32 cpu;
	__u32 first;  // the count of the first record to take
	__u32 closes; // 1: the closes log; 0: the openings log
};

static long drain_one(__u64 i, struct drain *d)
{
	__u32 idx = log_key(d->cpu, d->first + (__u32)i);
	if (d->closes) {
		struct close_rec *r = bpf_map_lookup_elem(&closes, &idx);
		if (r)
			apply_close(r);
	} else {
		struct open_rec *r = bpf_map_lookup_elem(&opens, &idx);
		if (r)
			apply_open(r);
	}
	return 0;
}

static __always_inline struct log_head *head_of(__u64 cpu)
{
	__u32 k = cpu;
	return bpf_map_lookup_elem(&heads, &k);
}

// snap_closes notes how many closes CPU cpu has logged: the drain takes
// those. Taken before the openings, the snapshot holds no close whose
// opening the drain does not take too.
static long snap_closes(__u64 cpu, void *unused)
{
	struct log_head *h = head_of(cpu);
	if (!h)
		return 1;
	// Fetches rather than plain loads, for their barrier: the records
	// counted are complete.
	h->closes_to = __sync_fetch_and_add(&h->closes, 0);
	return 0;
}

// drain_cpu applies CPU cpu's records of one log: the openings up to what
// it has logged by now, or the closes up to snap_closes's snapshot.
static long drain_cpu(__u64 cpu, __u32 *closes)
{
	struct log_head *h = head_of(cpu);
	if (!h)
		return 1;
	__u32 *done = *closes ? &h->closes_read : &h->opens_read;
	__u32 to = *closes ? h->closes_to : __sync_fetch_and_add(&h->opens, 0);
	struct drain d = {.cpu = cpu, .first = *done, .closes = *closes};
	bpf_loop(to - d.first, drain_one, &d, 0);
	__sync_lock_test_and_set(done, to); // frees the slots
	return 0;
}

// drain moves what the logs hold into conns: the openings of every CPU,
// then the closes, so that a close logged on another CPU than its opening
// finds its entry. A close and an opening of the same socket, one attempt
// failed and the next begun, are told apart by their times.
static __always_inline void drain(void)
{
	__u32 closes = 0;
	bpf_loop(log_cpus, snap_closes, NULL, 0);
	bpf_loop(log_cpus, drain_cpu, &closes, 0);
	closes = 1;
	bpf_loop(log_cpus, drain_cpu, &closes, 0);
}

// read_changes drains the logs into conns, then walks conns and copies out
// the entries that changed since a run last copied them into the ring
// changes, publishing its progress as it goes (Linux 5.17 or later, for
// bpf_loop). User space reads the entries while the walk goes on, from
// another thread: the caller's first changes are at hand after a short
// part of the walk, and the walk is not cut into runs that each walk the
// map again. A run stops early only when user space has not read the ring
// in time; then it is run again. It is an XDP program only because XDP programs can be run on demand
// with BPF_PROG_TEST_RUN and may walk a map: it never sees a packet.
SEC("xdp")
int read_changes(struct xdp_md *ctx)
{
	struct read_run *run = (void *)(long)ctx->data;
	if ((void *)(run + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__u32 zero = 0;
	struct read_progress *p = bpf_map_lookup_elem(&progress, &zero);
	if (!p || run->size == 0)
		return XDP_ABORTED;
	__u32 drained = run->start == 0;
	if (drained)
		drain();
	struct walk w = {.drained = drained, .p = p, .next = run->start, .published = run->start, .size = run->size, .flags = run->flags};
	w.read = *(volatile __u32 *)&p->read;
	long visited = bpf_for_each_map_elem(&conns, copy_changed, &w, 0);
	publish(&w);
	run->count = w.next;
	run->more = w.more;
	run->total = visited;
	run->connecting = w.connecting;
	return XDP_PASS;
}

// struct insert_run is the packet insert_seeded is run with, and what it
// leaves there for user space.
struct insert_run {
	__u32 count;    // set by user space: records of changes to insert
	__u32 inserted; // records inserted; the others have their cookie zeroed
	__s32 err;      // the error that stopped the run, 0 if none
	__u32 pad;
};

const struct insert_run *unused_insert_run __attribute__((unused));

// insert_one inserts one record of changes. run is a copy of the packet's
// on the stack: callbacks may not be handed the packet.
static long insert_one(struct bpf_map *map, const __u32 *idx, struct conn_rec *r, struct insert_run *run)
{
	if (*idx >= run->count)
		return 1;
	long err = bpf_map_update_elem(&conns, &r->cookie, &r->conn, BPF_NOEXIST);
	if (err == 0) {
		run->inserted++;
		return 0;
	}
	r->cookie = 0;
	if (err == -EEXIST)
		return 0; // the tracepoint saw this connection first
	run->err = err;
	return 1;
}

// insert_seeded inserts the first count records user space wrote into
// changes into conns, unless an entry of the same cookie exists: how the
// seed adds the connections found at start-up, at one system call for
// thousands where map updates from user space cost one each, without
// overwriting what the tracepoint recorded meanwhile.
SEC("xdp")
int insert_seeded(struct xdp_md *ctx)
{
	struct insert_run *run = (void *)(long)ctx->data;
	if ((void *)(run + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	struct insert_run r = {.count = run->count};
	bpf_for_each_map_elem(&changes, insert_one, &r, 0);
	run->inserted = r.inserted;
	run->err = r.err;
	return XDP_PASS;
}
