/* beat_baseline.c: the C floor for bench_failover's CPU figure: every INTERVAL
 * send one 90-byte multicast datagram on IFACE and read the peer's (no signing,
 * no logic), one wake-up per interval, as beat_baseline.py's select mode does.
 * Runs until killed.      beat_baseline IFACE INTERVAL_SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: beat_baseline IFACE INTERVAL_SECONDS\n");
        return 2;
    }
    unsigned idx = if_nametoindex(argv[1]);
    int64_t interval = (int64_t)(atof(argv[2]) * 1e9);
    if (!idx || interval <= 0) {
        fprintf(stderr, "beat_baseline: bad interface or interval\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, argv[1], strlen(argv[1]) + 1);
    struct sockaddr_in grp = {.sin_family = AF_INET, .sin_port = htons(6940)};
    inet_pton(AF_INET, "225.0.0.9", &grp.sin_addr);
    if (bind(s, (struct sockaddr *)&grp, sizeof grp) != 0) {
        perror("beat_baseline: bind");
        return 1;
    }
    struct ip_mreqn mr = {.imr_multiaddr = grp.sin_addr, .imr_ifindex = (int)idx};
    setsockopt(s, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr);
    setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &mr, sizeof mr);
    setsockopt(s, IPPROTO_IP, IP_MULTICAST_LOOP, &zero, sizeof zero);
    char payload[90], buf[2048];
    memset(payload, 'x', sizeof payload);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t next = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    for (;;) {
        sendto(s, payload, sizeof payload, 0, (struct sockaddr *)&grp, sizeof grp);
        while (recv(s, buf, sizeof buf, 0) > 0) {}
        next += interval;
        ts.tv_sec = next / 1000000000LL;
        ts.tv_nsec = next % 1000000000LL;
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}
