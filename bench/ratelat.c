/* ratelat: fixed-rate (open-loop) HTTP/1.1 keep-alive latency probe for bench_proxy.py.
 *
 *   ratelat HOST PORT PATH RATE CONNS SECONDS [WARMUP_SECONDS]
 *
 * Request k is due at t0 + k / RATE (evenly spaced, whatever the answers do)
 * and goes out on connection k % CONNS; if that connection still waits for an
 * earlier answer, the request waits for it. Latency runs from the due time to
 * the last byte of the answer, so a stall of the path is counted for every
 * request it delays (no coordinated omission: wrk's closed loop stops sending
 * while the path is stalled, and its paced mode sends in bursts). Answers of the
 * first WARMUP_SECONDS (default 0.5) are not counted.
 * Prints one line: "sent N done N errors N rate R p50 X p90 X p99 X p999 X max X" (ms).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define MAXQ 4096 /* due times queued on one connection */

struct conn {
    int fd;
    char *buf;
    size_t have;          /* bytes of the current answer read so far */
    long need;            /* total bytes of the current answer, -1 until the header is in */
    int64_t q[MAXQ];      /* due times (ns) of the requests sent or waiting, oldest first */
    int qh, qn;           /* head index, count */
    int inflight;         /* 1 while a request is on the wire */
};

static char req[512];
static size_t reqlen;
static int64_t warm_until;
static double *lat, *lat_at;
static long nlat, caplat, errors, sent;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int dial(const char *host, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_next(struct conn *c) {
    if (c->inflight || !c->qn) return;
    ssize_t w = write(c->fd, req, reqlen); /* a small request always fits the socket buffer */
    if (w != (ssize_t)reqlen) { errors++; return; }
    c->inflight = 1;
    sent++;
}

static void record(int64_t due, int64_t done) {
    if (due < warm_until) return;
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 16;
        lat = realloc(lat, caplat * sizeof *lat);
        lat_at = realloc(lat_at, caplat * sizeof *lat_at);
        if (!lat || !lat_at) { perror("realloc"); exit(1); }
    }
    lat_at[nlat] = (due - warm_until) / 1e6;
    lat[nlat++] = (done - due) / 1e6;
}

/* the end of the header and Content-Length, or -1 if the header is not complete */
static long answer_size(const char *b, size_t n) {
    const char *end = memmem(b, n, "\r\n\r\n", 4);
    if (!end) return -1;
    long body = 0;
    for (const char *p = b; p < end; p++) {
        if ((*p == 'C' || *p == 'c') && !strncasecmp(p, "Content-Length:", 15)) {
            body = strtol(p + 15, NULL, 10);
            break;
        }
    }
    return (end - b) + 4 + body;
}

static int on_readable(struct conn *c) {
    for (;;) {
        ssize_t r = read(c->fd, c->buf + c->have, BUF - c->have);
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        if (r == 0) return -1;
        c->have += r;
        for (;;) {
            if (c->need < 0) c->need = answer_size(c->buf, c->have);
            if (c->need < 0 || (long)c->have < c->need) {
                if (c->have == BUF) return -1; /* answers larger than the buffer: not for this probe */
                break;
            }
            int64_t t = now_ns();
            record(c->q[c->qh], t);
            c->qh = (c->qh + 1) % MAXQ;
            c->qn--;
            c->inflight = 0;
            memmove(c->buf, c->buf + c->need, c->have - c->need);
            c->have -= c->need;
            c->need = -1;
            send_next(c);
            if (!c->have) break;
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (!nlat) return 0;
    long i = (long)(p / 100.0 * nlat);
    if (i >= nlat) i = nlat - 1;
    return lat[i];
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: ratelat HOST PORT PATH RATE CONNS SECONDS [WARMUP_SECONDS]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[4]), secs = atof(argv[6]), warm = argc > 7 ? atof(argv[7]) : 0.5;
    int nconn = atoi(argv[5]);
    if (rate <= 0 || nconn <= 0 || secs <= 0) { fprintf(stderr, "ratelat: bad arguments\n"); return 2; }
    reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", argv[3], host, port);

    int ep = epoll_create1(0);
    struct conn *cs = calloc(nconn, sizeof *cs);
    for (int i = 0; i < nconn; i++) {
        cs[i].fd = dial(host, port);
        if (cs[i].fd < 0) { perror("ratelat: connect"); return 1; }
        cs[i].buf = malloc(BUF);
        cs[i].need = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
        /* non-blocking reads after the blocking connect */
        int fl = 1;
        ioctl(cs[i].fd, FIONBIO, &fl);
    }
    int64_t t0 = now_ns() + 1000000, interval = (int64_t)(1e9 / rate);
    int64_t end = t0 + (int64_t)(secs * 1e9);
    warm_until = t0 + (int64_t)(warm * 1e9);
    long k = 0;
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        /* release every request due by now */
        while (t0 + k * interval <= t && t0 + k * interval < end) {
            struct conn *c = &cs[k % nconn];
            if (c->qn == MAXQ) { errors++; k++; continue; }
            c->q[(c->qh + c->qn) % MAXQ] = t0 + k * interval;
            c->qn++;
            send_next(c);
            k++;
        }
        int64_t next = t0 + k * interval;
        if (next >= end) {
            int busy = 0;
            for (int i = 0; i < nconn; i++) busy |= cs[i].qn;
            if (!busy || t > end + 2000000000LL) break; /* all answered, or 2 s grace */
            next = t + 10000000;
        }
        /* sleep until the next request is due or an answer comes; the default timer
           slack (50 us) lets a wake-up send two or three requests at once, each timed
           from its own due time: less CPU taken from the paths measured */
        int64_t wait = next - now_ns();
        struct timespec ts = {.tv_sec = wait > 0 ? wait / 1000000000 : 0, .tv_nsec = wait > 0 ? wait % 1000000000 : 0};
        int n = epoll_pwait2(ep, evs, 256, &ts, NULL);
        for (int i = 0; i < n; i++) {
            uint32_t id = evs[i].data.u32;
            if (on_readable(&cs[id]) < 0) {
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, cs[id].fd, NULL);
                close(cs[id].fd);
                cs[id].qn = 0; /* its requests are lost: counted as errors */
                cs[id].inflight = 1; /* never send on it again */
            }
        }
    }
    const char *dump = getenv("RATELAT_DUMP"); /* "due_ms latency_ms" per answer, for looking at stalls */
    if (dump) {
        FILE *f = fopen(dump, "w");
        for (long i = 0; f && i < nlat; i++) fprintf(f, "%.3f %.3f\n", lat_at[i], lat[i]);
        if (f) fclose(f);
    }
    qsort(lat, nlat, sizeof *lat, cmp);
    double span = (end - warm_until) / 1e9;
    printf("sent %ld done %ld errors %ld rate %.0f p50 %.3f p90 %.3f p99 %.3f p999 %.3f max %.3f\n", sent, nlat,
           errors, nlat / span, pct(50), pct(90), pct(99), pct(99.9), nlat ? lat[nlat - 1] : 0.0);
    return 0;
}
