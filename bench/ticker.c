/* ticker: how late does a real-time thread wake up on this machine?
 *
 *   ticker INTERVAL_US SECONDS PRIO [THRESHOLD_MS [CPU]]
 *
 * Sleeps to absolute deadlines every INTERVAL_US (clock_nanosleep, CLOCK_MONOTONIC)
 * at SCHED_FIFO priority PRIO (0: normal scheduling), memory locked, for SECONDS.
 * Lateness = wake-up time - deadline. Prints one line per wake-up later than
 * THRESHOLD_MS (default 5): "stall MONO_S LATE_MS", then one summary line:
 * (CPU: pinned to that CPU; default: wherever the scheduler puts it)
 * "ticks N p50 X p99 X p999 X max X over5 N over10 N over20 N over30 N" (ms).
 * It is the floor for any beat sender: a Python beat thread cannot be on time
 * when a C thread at the same priority is not. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: ticker INTERVAL_US SECONDS PRIO [THRESHOLD_MS]\n");
        return 2;
    }
    int64_t interval = atoll(argv[1]) * 1000LL;
    double seconds = atof(argv[2]);
    int prio = atoi(argv[3]);
    double threshold = argc > 4 ? atof(argv[4]) : 5.0;
    if (argc > 5) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[5]), &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) perror("ticker: sched_setaffinity");
    }
    if (interval <= 0 || seconds <= 0) {
        fprintf(stderr, "ticker: INTERVAL_US and SECONDS must be positive\n");
        return 2;
    }
    if (prio > 0) {
        struct sched_param sp = {.sched_priority = prio};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
            perror("ticker: sched_setscheduler (running at normal priority)");
    }
    mlockall(MCL_CURRENT | MCL_FUTURE);
    size_t n = (size_t)(seconds * 1e9 / interval) + 1;
    int64_t *late = calloc(n, sizeof *late);
    if (!late) return 1;
    int64_t t0 = now_ns(), due = t0;
    size_t k = 0;
    size_t over[4] = {0};
    const double lim[4] = {5, 10, 20, 30};
    while (k < n) {
        due += interval;
        struct timespec ts = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {}
        int64_t t = now_ns();
        int64_t l = t - due;
        late[k++] = l;
        double ms = l / 1e6;
        for (int i = 0; i < 4; i++)
            if (ms > lim[i]) over[i]++;
        if (ms > threshold) {
            printf("stall %.6f %.3f\n", t / 1e9, ms);
            fflush(stdout);
        }
        if (t > due + interval) /* a long stall: restart the grid instead of firing a burst */
            due = t - (t - due) % interval;
    }
    qsort(late, k, sizeof *late, cmp64);
    printf("ticks %zu p50 %.3f p99 %.3f p999 %.3f max %.3f over5 %zu over10 %zu over20 %zu over30 %zu\n", k,
           late[k / 2] / 1e6, late[k * 99 / 100] / 1e6, late[k * 999 / 1000] / 1e6, late[k - 1] / 1e6, over[0],
           over[1], over[2], over[3]);
    return 0;
}
