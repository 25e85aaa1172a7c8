// SPDX-License-Identifier: GPL-2.0
/* halb's XDP data plane: IPVS Direct Return in the driver.
 *
 * A packet to a virtual service (VIP, port, protocol in `services`) is given
 * a real server and sent back out of the interface it came in on with the
 * real server's MAC as destination (XDP_TX), or through another interface
 * (bpf_redirect) when the route to the real server says so; the IP packet is
 * not changed (Direct Return: the real server holds the VIP on lo). A real
 * server on this host (Local) gets the packet through the stack (XDP_PASS).
 *
 * - flows (LRU): 5-tuple -> real server; every packet refreshes its entry,
 *   so a change of the server set never moves an established connection;
 *   FIN/RST marks it closing (tcpfin timeout), a new SYN on a closing flow
 *   is scheduled again (IPVS's connection reuse).
 * - new connections: a persistence template (client & netmask -> server),
 *   or the service's slot table, written by halb from the exact IPVS
 *   algorithms (halb.nft.plan): a per-service counter walks it for rr, wrr
 *   and the connection-count schedulers, a hash of the client (sh), of the
 *   destination (dh) or hash_32 (mh) picks a bucket.
 * - the slot table has two generations: halb writes the idle one, then
 *   switches the service's `gen` in one map update (atomic per service).
 * - per-CPU counters per real server (connections, packets, bytes).
 * - the next hop: bpf_fib_lookup (route + neighbour table) for the first
 *   packet of each connection, its answer kept in the real server's entry
 *   for the packets after it; halb's own resolution when the kernel has no
 *   neighbour entry yet.
 * The Layout here and in halb/xdp/layout.py must match (LAYOUT_VERSION).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define LAYOUT_VERSION 1
#define MAX_SERVICES 4096
#define MAX_DESTS 65536
#define MAX_SLOTS (1 << 20)
#define MAX_FLOWS 262144
#define MAX_TEMPLATES 65536
#define AF_INET 2

#define MODE_SEQ 0      /* a counter walks the slots (rr, wrr, lc...) */
#define MODE_SADDR 1    /* IPVS sh: hash_32(port + saddr, 8) */
#define MODE_DADDR 2    /* IPVS dh: daddr * 2654435761 >> 24 */
#define MODE_HASH 3     /* mh: hash_32 of saddr (+ sport) scaled to the table */

#define SF_PORT 1       /* sh-port / mh-port: the source port is hashed too */

struct svc_key {
	__u32 addr;     /* network order */
	__u16 port;     /* network order */
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 sid;
	__u32 nslots;
	__u32 gen;
	__u32 mode;
	__u32 ptimeout;  /* persistence, seconds; 0: none */
	__u32 pmask;     /* network order */
	__u32 flags;
	__u32 pad;
};

struct slot_key {
	__u32 sid;
	__u32 idx;       /* gen << 31 | slot */
};

struct dest_val {
	__u32 addr;      /* network order */
	__u32 ifindex;   /* fallback when bpf_fib_lookup cannot answer */
	__u32 sid;       /* the service it serves (ids are reused) */
	__u8 mac[6];     /* the real server's MAC as halb resolved it */
	__u8 smac[6];    /* and our interface's */
	__u8 local;      /* 1: served by this host (XDP_PASS) */
	__u8 live;       /* 0: removed; only its established flows use it */
	__u8 has_mac;
	__u8 pad;
};

struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_val {
	__u32 did;
	__u32 closing;
	__u64 seen;      /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
};

struct tmpl_key {
	__u32 sid;
	__u32 net;
};

struct tmpl_val {
	__u32 did;
	__u32 pad;
	__u64 seen;
};

struct counters {
	__u64 conns;
	__u64 pkts;
	__u64 bytes;
};

struct config {
	__u64 tcp_ns;
	__u64 tcpfin_ns;
	__u64 udp_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SLOTS);
	__type(key, struct slot_key);
	__type(value, __u32);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES + 1);
	__type(key, __u32);
	__type(value, __u64);
} seqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DESTS);
	__type(key, __u32);
	__type(value, struct dest_val);
} dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TEMPLATES);
	__type(key, struct tmpl_key);
	__type(value, struct tmpl_val);
} templates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_DESTS);
	__type(key, __u32);
	__type(value, struct counters);
} stats SEC(".maps");

/* index 0: packets dropped for want of a real server or its MAC */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

static __always_inline __u32 hash_32(__u32 val, __u32 bits)
{
	return (val * 0x61C88647u) >> (32 - bits);
}

static __always_inline int drop(__u32 why)
{
	__u64 *c = bpf_map_lookup_elem(&drops, &why);
	if (c)
		*c += 1;
	return XDP_DROP;
}

static __always_inline int pick(struct svc_val *sv, __u32 saddr, __u16 sport, __u32 daddr, __u32 *did)
{
	__u32 n = sv->nslots, slot, h;
	struct slot_key sk;
	__u32 *d;

	if (n == 0)
		return -1;
	if (sv->mode == MODE_SEQ) {
		__u32 sid = sv->sid;
		__u64 *c = bpf_map_lookup_elem(&seqs, &sid);
		if (!c)
			return -1;
		slot = __sync_fetch_and_add(c, 1) % n;
	} else if (sv->mode == MODE_SADDR) {
		h = bpf_ntohl(saddr) + ((sv->flags & SF_PORT) ? bpf_ntohs(sport) : 0);
		slot = hash_32(h, 8) % n;
	} else if (sv->mode == MODE_DADDR) {
		slot = ((bpf_ntohl(daddr) * 2654435761u) >> 24) % n;
	} else {
		h = bpf_ntohl(saddr);
		if (sv->flags & SF_PORT)
			h ^= hash_32(bpf_ntohs(sport), 32);
		slot = (__u32)(((__u64)hash_32(h, 32) * n) >> 32);
	}
	sk.sid = sv->sid;
	sk.idx = (sv->gen << 31) | slot;
	d = bpf_map_lookup_elem(&slots, &sk);
	if (!d)
		return -1;
	*did = *d;
	return 0;
}

SEC("xdp")
int halb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct svc_key skey = {};
	struct svc_val *sv;
	struct flow_key fk = {};
	struct flow_val *fv, nfv = {};
	struct dest_val *dv;
	struct counters *cnt;
	struct config *cfg;
	__u32 zero = 0, did = 0, ihl;
	__u16 sport, dport;
	__u8 tflags = 0;   /* bit0 SYN, bit1 ACK, bit2 FIN|RST */
	__u64 now, tmo;
	int new_conn = 0;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (iph->frag_off & bpf_htons(0x3fff))  /* fragments: the stack reassembles */
		return XDP_PASS;
	ihl = iph->ihl * 4;
	if (ihl < sizeof(*iph))
		return XDP_PASS;
	if (iph->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)iph + ihl;
		if ((void *)(th + 1) > data_end)
			return XDP_PASS;
		sport = th->source;
		dport = th->dest;
		tflags = (th->syn ? 1 : 0) | (th->ack ? 2 : 0) | ((th->fin || th->rst) ? 4 : 0);
	} else {
		struct udphdr *uh = (void *)iph + ihl;
		if ((void *)(uh + 1) > data_end)
			return XDP_PASS;
		sport = uh->source;
		dport = uh->dest;
	}
	skey.addr = iph->daddr;
	skey.port = dport;
	skey.proto = iph->protocol;
	sv = bpf_map_lookup_elem(&services, &skey);
	if (!sv)
		return XDP_PASS;
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_PASS;
	now = bpf_ktime_get_ns();

	fk.saddr = iph->saddr;
	fk.daddr = iph->daddr;
	fk.sport = sport;
	fk.dport = dport;
	fk.proto = iph->protocol;
	fv = bpf_map_lookup_elem(&flows, &fk);
	if (fv) {
		if (iph->protocol == IPPROTO_UDP)
			tmo = cfg->udp_ns;
		else
			tmo = fv->closing ? cfg->tcpfin_ns : cfg->tcp_ns;
		if (now - fv->seen > tmo)
			fv = 0;  /* expired: a new connection */
		else if (fv->closing && (tflags & 3) == 1)
			fv = 0;  /* a new SYN on a closing flow: scheduled again */
	}
	if (fv) {
		did = fv->did;
		dv = bpf_map_lookup_elem(&dests, &did);
		if (!dv || dv->sid != sv->sid)
			fv = 0;  /* its server was deleted with its service */
	}
	if (fv) {
		fv->seen = now;
		if ((tflags & 4) && !fv->closing)
			fv->closing = 1;
	} else {
		int got = 0;
		if (sv->ptimeout) {
			struct tmpl_key tk = { .sid = sv->sid, .net = iph->saddr & sv->pmask };
			struct tmpl_val *tv = bpf_map_lookup_elem(&templates, &tk);
			if (tv && now - tv->seen <= (__u64)sv->ptimeout * 1000000000ull) {
				__u32 tdid = tv->did;
				struct dest_val *t = bpf_map_lookup_elem(&dests, &tdid);
				if (t && t->live && t->sid == sv->sid) {
					did = tdid;
					tv->seen = now;
					got = 1;
				}
			}
			if (!got) {
				struct tmpl_val ntv = {};
				if (pick(sv, iph->saddr, sport, iph->daddr, &did))
					return drop(0);
				ntv.did = did;
				ntv.seen = now;
				bpf_map_update_elem(&templates, &tk, &ntv, BPF_ANY);
				got = 1;
			}
		}
		if (!got && pick(sv, iph->saddr, sport, iph->daddr, &did))
			return drop(0);
		dv = bpf_map_lookup_elem(&dests, &did);
		if (!dv)
			return drop(0);
		nfv.did = did;
		nfv.closing = (tflags & 4) ? 1 : 0;
		nfv.seen = now;
		bpf_map_update_elem(&flows, &fk, &nfv, BPF_ANY);
		new_conn = 1;
	}
	if (sv->ptimeout && !new_conn) {
		/* traffic keeps the template of the connections it controls */
		struct tmpl_key tk = { .sid = sv->sid, .net = iph->saddr & sv->pmask };
		struct tmpl_val *tv = bpf_map_lookup_elem(&templates, &tk);
		if (tv && tv->did == did)
			tv->seen = now;
	}
	cnt = bpf_map_lookup_elem(&stats, &did);
	if (cnt) {
		cnt->conns += new_conn;
		cnt->pkts += 1;
		cnt->bytes += bpf_ntohs(iph->tot_len);
	}
	if (dv->local)
		return XDP_PASS;
	if (!new_conn && dv->has_mac) {
		/* an established flow: the MAC the last new connection's route
		 * lookup found (bpf_fib_lookup once per connection, not per packet) */
		__builtin_memcpy(eth->h_dest, dv->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, dv->smac, ETH_ALEN);
		if (dv->ifindex == 0 || dv->ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(dv->ifindex, 0);
	}
	{
		struct bpf_fib_lookup fib = {};
		long rc;
		fib.family = AF_INET;
		fib.l4_protocol = iph->protocol;
		fib.tot_len = bpf_ntohs(iph->tot_len);
		fib.ipv4_dst = dv->addr;
		fib.ifindex = ctx->ingress_ifindex;
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_OUTPUT);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
			__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
			/* the route's answer for the flows to come (a changed MAC or
			 * route is picked up at the next new connection) */
			__builtin_memcpy(dv->mac, fib.dmac, ETH_ALEN);
			__builtin_memcpy(dv->smac, fib.smac, ETH_ALEN);
			dv->ifindex = fib.ifindex;
			dv->has_mac = 1;
			if (fib.ifindex == ctx->ingress_ifindex)
				return XDP_TX;
			return bpf_redirect(fib.ifindex, 0);
		}
		if (!dv->has_mac)
			return drop(1);
		__builtin_memcpy(eth->h_dest, dv->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, dv->smac, ETH_ALEN);
		if (dv->ifindex == 0 || dv->ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(dv->ifindex, 0);
	}
}

char _license[] SEC("license") = "GPL";
