//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Conntrack lookups from inside the kernel, for the scrape that reads many
// new connections at once.
//
// lookup_ct walks the map of recorded connections and looks each one that
// has a tuple and was not looked up before up in the conntrack table of the
// network namespace it runs in, writing one result per connection: its
// tuple and the entry's reply tuple. It is an XDP program only because the
// conntrack lookup kfuncs are offered to XDP and TC programs: it never sees
// a packet. User space runs it with BPF_PROG_TEST_RUN from a thread inside
// the namespace whose table it wants (kernel 5.18 or later), while another
// thread reads the connections, and joins the two. Runs are serialised by
// user space: they share the results and the looked counter.
//
// Its cost grows with the new connections, not with the table: about 1 µs
// per lookup on a table of 50,000 entries (memory latency dominates, as it
// does for a dump of the table) and 0.05 µs per connection walked.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#include "conn.h"

#define BPF_F_CURRENT_NETNS (-1)
// Size of struct bpf_ct_opts before the zone fields were added; kernels that
// know them accept this size too.
#define CT_OPTS_SIZE 12

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// struct ct_tuple is one direction of a conntrack entry: addresses in
// 16-byte form (IPv4-mapped for IPv4), ports in host byte order.
struct ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

// struct ct_result is what one lookup found: orig is the connection's own
// tuple, reply the reply tuple of its entry. A connection the table does not
// hold (or holds only as some entry's reply direction) gets the mirror of
// orig, which is what an entry that translates nothing looks like.
struct ct_result {
	struct ct_tuple orig;
	struct ct_tuple reply;
};

const struct ct_result *unused_ct_result __attribute__((unused));
const struct run *unused_run __attribute__((unused));

// Set by user space at load time: the lookups of one run.
volatile const __u32 budget = 16384;

// looked counts the lookups of the current run. It lives in map memory
// because the verifier follows a counter on the stack through every
// iteration of the walk, up to the budget, and gives up.
__u32 looked;

// Results of a run, i = 0..looked-1 in the order of its walk. max_entries,
// set by user space at load time, is the budget; user space reads the
// results through a memory mapping after each run.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct ct_result);
} results SEC(".maps");

// struct run is what a run gives back to user space, in its packet.
struct run {
	__u32 visited; // connections walked
	__u32 looked;  // connections looked up: results written
	__u32 done;    // 1 when the walk reached the end of the map
};

struct walk {
	struct xdp_md *ctx;
	__u32 visited;
	int stopped; // the budget ran out before the end of the map
};

static __always_inline void put_addr(__u8 dst[16], const __u8 src[16], int v4)
{
	if (v4) {
		__builtin_memset(dst, 0, 10);
		dst[10] = dst[11] = 0xff;
		__builtin_memcpy(dst + 12, src, 4);
	} else {
		__builtin_memcpy(dst, src, 16);
	}
}

// v4_mapped reports whether a is an IPv4-mapped IPv6 address: a dual-stack
// socket's connection to an IPv4 address, which conntrack holds as IPv4.
static __always_inline int v4_mapped(const __u8 a[16])
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return 0;
	return a[10] == 0xff && a[11] == 0xff;
}

// same_orig reports whether the entry's original tuple is t: a tuple can
// also match an entry's reply direction, which says nothing about where the
// connection goes.
static __always_inline int same_orig(const struct nf_conntrack_tuple *o, const struct bpf_sock_tuple *t, int v4)
{
	if (v4)
		return o->src.u3.ip == t->ipv4.saddr && o->dst.u3.ip == t->ipv4.daddr &&
		       o->src.u.all == t->ipv4.sport && o->dst.u.all == t->ipv4.dport;
	for (int i = 0; i < 4; i++)
		if (o->src.u3.all[i] != t->ipv6.saddr[i] || o->dst.u3.all[i] != t->ipv6.daddr[i])
			return 0;
	return o->src.u.all == t->ipv6.sport && o->dst.u.all == t->ipv6.dport;
}

static long look_up(struct bpf_map *map, __u64 *cookie, struct conn *c, struct walk *w)
{
	w->visited++;
	if (c->ct_looked || !c->sport || c->state == CONN_CONNECTING)
		return 0;
	__u32 idx = looked;
	if (idx >= budget) {
		w->stopped = 1; // budget spent: the next run goes on from here
		return 1;
	}
	struct ct_result *r = bpf_map_lookup_elem(&results, &idx);
	if (!r)
		return 1;

	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts opts = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = IPPROTO_TCP};
	const __u8 *saddr = c->saddr, *daddr = c->daddr;
	int v4 = c->family == AF_INET;
	if (!v4 && v4_mapped(saddr) && v4_mapped(daddr)) {
		v4 = 1;
		saddr += 12;
		daddr += 12;
	}
	__u32 size;
	if (v4) {
		__builtin_memcpy(&t.ipv4.saddr, saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, daddr, 4);
		t.ipv4.sport = bpf_htons(c->sport);
		t.ipv4.dport = bpf_htons(c->dport);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, daddr, 16);
		t.ipv6.sport = bpf_htons(c->sport);
		t.ipv6.dport = bpf_htons(c->dport);
		size = sizeof(t.ipv6);
	}
	put_addr(r->orig.saddr, saddr, v4);
	put_addr(r->orig.daddr, daddr, v4);
	r->orig.sport = c->sport;
	r->orig.dport = c->dport;

	struct nf_conn *ct = bpf_xdp_ct_lookup(w->ctx, &t, size, &opts, CT_OPTS_SIZE);
	if (ct && same_orig(&ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, &t, v4)) {
		const struct nf_conntrack_tuple *rt = &ct->tuplehash[IP_CT_DIR_REPLY].tuple;
		put_addr(r->reply.saddr, (const __u8 *)&rt->src.u3, v4);
		put_addr(r->reply.daddr, (const __u8 *)&rt->dst.u3, v4);
		r->reply.sport = bpf_ntohs(rt->src.u.all);
		r->reply.dport = bpf_ntohs(rt->dst.u.all);
	} else {
		__builtin_memcpy(r->reply.saddr, r->orig.daddr, 16);
		__builtin_memcpy(r->reply.daddr, r->orig.saddr, 16);
		r->reply.sport = c->dport;
		r->reply.dport = c->sport;
	}
	if (ct)
		bpf_ct_release(ct);
	c->ct_looked = 1;
	looked = idx + 1;
	return 0;
}

SEC("xdp")
int lookup_ct(struct xdp_md *ctx)
{
	struct run *run = (void *)(long)ctx->data;
	if ((void *)(run + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	struct walk w = {.ctx = ctx};
	looked = 0;
	bpf_for_each_map_elem(&conns, look_up, &w, 0);
	run->visited = w.visited;
	run->looked = looked;
	run->done = !w.stopped;
	return XDP_PASS;
}
