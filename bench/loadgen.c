/* bench/load.py in C, so that the load generator is not what is measured: N websocket stations
 * (subprotocol ocpp1.6) each send a BootNotification, then load.py's MIX (the same bytes, in
 * the same order), one CALL at a time, each as soon as the last is answered, for warm-up +
 * measured seconds. One thread, epoll. bench/run.py builds it (cc -O2) into a cache directory.
 *
 *   loadgen HOST PORT [--stations N] [--seconds S] [--warmup W] [--prefix BENCH]
 *           [--first K] [--server-pid PID]      (stations named prefix + K, K+1, ...)
 *   loadgen --frames        the frames it sends, one a line (tests compare them with load.py's)
 *
 * Prints one JSON object with load.py's keys. The stations connect one after the other before
 * the clock starts: connecting is not what is measured.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* json.dumps([2, "ID", action, payload]) of load.py's MIX; "ID" becomes the call's number */
#define NOW "\"2026-01-01T00:00:00.000Z\""
static const char *MIX[] = {
    "[2, \"ID\", \"Heartbeat\", {}]",
    "[2, \"ID\", \"StatusNotification\", {\"connectorId\": 1, \"errorCode\": \"NoError\", "
    "\"status\": \"Available\", \"timestamp\": " NOW "}]",
    "[2, \"ID\", \"MeterValues\", {\"connectorId\": 1, \"meterValue\": [{\"timestamp\": " NOW
    ", \"sampledValue\": [{\"value\": \"1234.5\", \"measurand\": "
    "\"Energy.Active.Import.Register\", \"unit\": \"Wh\"}, {\"value\": \"7200\", "
    "\"measurand\": \"Power.Active.Import\", \"unit\": \"W\"}]}]}]",
    "[2, \"ID\", \"Heartbeat\", {}]",
};
#define NMIX (sizeof MIX / sizeof *MIX)
static const char *BOOT = "[2, \"0\", \"BootNotification\", "
                          "{\"chargePointVendor\": \"Bench\", \"chargePointModel\": \"Load\"}]";

typedef struct {
    int fd; /* -1: failed or finished */
    unsigned i; /* the number of the CALL in flight */
    double sent;
    size_t have;
    unsigned char buf[8192];
} Station;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu_self(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6;
}

/* utime + stime of process pid, in seconds (/proc/PID/stat fields 14 and 15) */
static double cpu_pid(int pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static int send_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

/* a client's (masked) frame of opcode op: 1 text, 0xA pong */
static int send_frame(int fd, int op, const void *payload, size_t len) {
    unsigned char out[2048];
    size_t h = 0;
    if (len > sizeof out - 8) return -1;
    out[h++] = 0x80 | op;
    if (len < 126) {
        out[h++] = 0x80 | len;
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = len >> 8;
        out[h++] = len & 0xff;
    }
    uint32_t key = (uint32_t)rand();
    memcpy(out + h, &key, 4);
    for (size_t j = 0; j < len; j++) out[h + 4 + j] = ((const unsigned char *)payload)[j] ^ out[h + (j & 3)];
    return send_all(fd, out, h + 4 + len);
}

/* MIX[i % NMIX] with "ID" replaced by "i", as load.py does */
static int call_text(char *out, size_t cap, unsigned i) {
    const char *tpl = MIX[i % NMIX], *id = strstr(tpl, "\"ID\"");
    return snprintf(out, cap, "%.*s\"%u\"%s", (int)(id - tpl), tpl, i, id + 4);
}

static int send_call(Station *s) {
    char text[1024];
    int n = call_text(text, sizeof text, s->i);
    s->sent = now();
    return send_frame(s->fd, 1, text, n);
}

/* the first complete frame from the server in s->buf: its length (0: not all there yet) */
static size_t next_frame(Station *s, int *op, unsigned char **payload, size_t *len) {
    unsigned char *b = s->buf;
    size_t h = 2, n;
    if (s->have < 2) return 0;
    n = b[1] & 0x7f;
    if (n == 126) {
        if (s->have < 4) return 0;
        n = (size_t)b[2] << 8 | b[3];
        h = 4;
    } else if (n == 127) {
        if (s->have < 10) return 0;
        n = 0;
        for (int j = 2; j < 10; j++) n = n << 8 | b[j];
        h = 10;
    }
    if (n > sizeof s->buf - h) return (size_t)-1; /* longer than any answer to these CALLs */
    if (s->have < h + n) return 0;
    *op = b[0] & 0x0f;
    *payload = b + h;
    *len = n;
    return h + n;
}

static void consume(Station *s, size_t n) {
    memmove(s->buf, s->buf + n, s->have - n);
    s->have -= n;
}

/* a connected, upgraded websocket (blocking), or -1 */
static int open_station(const char *host, int port, const char *name) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) goto fail;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[512], resp[2048];
    int n = snprintf(req, sizeof req,
                     "GET /%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n",
                     name, host, port);
    if (send_all(fd, req, n)) goto fail;
    size_t got = 0;
    while (got < 4 || memcmp(resp + got - 4, "\r\n\r\n", 4)) { /* byte by byte: no further */
        if (got == sizeof resp - 1 || recv(fd, resp + got, 1, 0) != 1) goto fail;
        got++;
    }
    resp[got] = 0;
    if (strncmp(resp, "HTTP/1.1 101", 12)) {
        fprintf(stderr, "loadgen: %s refused: %.80s\n", name, resp);
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

/* one recv into s->buf: -1 when the connection is gone, else 0 */
static int pump(Station *s) {
    ssize_t r = recv(s->fd, s->buf + s->have, sizeof s->buf - s->have, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (r <= 0) return -1;
    s->have += r;
    return 0;
}

/* the next text frame in s->buf (pings answered, on the way): its length, to consume once
 * read; 0 when none is complete yet, -1 when the server closed or sent nonsense */
static long take(Station *s, unsigned char **payload, size_t *len) {
    for (;;) {
        int op;
        size_t n = next_frame(s, &op, payload, len);
        if (n == 0 || n == (size_t)-1) return n == 0 ? 0 : -1;
        if (op == 1) return (long)n;
        if (op == 8) return -1;
        if (op == 9 && send_frame(s->fd, 0xA, *payload, *len)) return -1;
        consume(s, n);
    }
}

static void drop(Station *s) {
    close(s->fd);
    s->fd = -1;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--frames")) {
        printf("%s\n", BOOT);
        for (unsigned i = 0; i < NMIX; i++) printf("%s\n", MIX[i]);
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: loadgen HOST PORT [--stations N] [--seconds S] [--warmup W] "
                        "[--prefix P] [--first K] [--server-pid PID]\n");
        return 2;
    }
    const char *host = argv[1], *prefix = "BENCH";
    int port = atoi(argv[2]), n = 100, server_pid = 0, first = 0;
    double seconds = 10, warmup = 1;
    for (int j = 3; j + 1 < argc; j += 2) {
        if (!strcmp(argv[j], "--stations")) n = atoi(argv[j + 1]);
        else if (!strcmp(argv[j], "--seconds")) seconds = atof(argv[j + 1]);
        else if (!strcmp(argv[j], "--warmup")) warmup = atof(argv[j + 1]);
        else if (!strcmp(argv[j], "--prefix")) prefix = argv[j + 1];
        else if (!strcmp(argv[j], "--server-pid")) server_pid = atoi(argv[j + 1]);
        else if (!strcmp(argv[j], "--first")) first = atoi(argv[j + 1]);
        else { fprintf(stderr, "loadgen: unknown option %s\n", argv[j]); return 2; }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    srand(1);

    Station *ss = calloc(n, sizeof *ss);
    int connected = 0, failed = 0, errors = 0;
    double t0 = now();
    for (int k = 0; k < n; k++) { /* connect and boot, all of them, before the clock starts */
        char name[64];
        snprintf(name, sizeof name, "%s%06d", prefix, first + k);
        ss[k].fd = open_station(host, port, name);
        if (ss[k].fd < 0 || send_frame(ss[k].fd, 1, BOOT, strlen(BOOT))) {
            if (ss[k].fd >= 0) close(ss[k].fd);
            ss[k].fd = -1;
            failed++;
        }
    }
    for (int k = 0; k < n; k++) {
        Station *s = &ss[k];
        unsigned char *p;
        size_t len;
        long used;
        if (s->fd < 0) continue;
        while ((used = take(s, &p, &len)) == 0 && pump(s) == 0) {} /* a blocking socket */
        if (used <= 0) {
            drop(s);
            failed++;
            continue;
        }
        consume(s, used);
        connected++;
    }
    double connect_s = now() - t0;

    int ep = epoll_create1(0), active = 0;
    for (int k = 0; k < n; k++) {
        Station *s = &ss[k];
        if (s->fd < 0) continue;
        fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = k};
        epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
        s->i = 1; /* load.py's first CALL is MIX[1] */
        if (send_call(s)) errors++;
        active++;
    }
    size_t calls = 0, cap = 1 << 20;
    float *lat = malloc(cap * sizeof *lat);
    double start = now(), t1 = start + warmup, stop = t1 + seconds, cpu0 = 0, scpu0 = 0;
    int measuring = 0;
    struct epoll_event evs[1024];
    while (active > 0 && now() < stop + 10) { /* 10 s more for answers still owed, at most */
        if (!measuring && now() >= t1) {
            measuring = 1;
            t1 = now();
            cpu0 = cpu_self();
            scpu0 = server_pid ? cpu_pid(server_pid) : 0;
        }
        int m = epoll_wait(ep, evs, 1024, 100);
        for (int e = 0; e < m; e++) {
            Station *s = &ss[evs[e].data.u32];
            unsigned char *p;
            size_t len;
            if (s->fd < 0) continue;
            long used = pump(s) < 0 ? -1 : take(s, &p, &len);
            for (; used != 0; used = take(s, &p, &len)) {
                if (used < 0) {
                    failed++;
                    active--;
                    drop(s);
                    break;
                }
                double t = now();
                if (len < 3 || memcmp(p, "[3,", 3)) errors++;
                consume(s, used);
                if (measuring) {
                    if (calls == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
                    lat[calls++] = (float)(t - s->sent);
                }
                if (t >= stop) { /* done: this station sends no more (and closes at exit) */
                    active--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    break;
                }
                s->i++;
                if (send_call(s)) errors++;
            }
        }
    }
    double elapsed = now() - t1, client_cpu = cpu_self() - cpu0;
    double server_cpu = server_pid ? cpu_pid(server_pid) - scpu0 : 0;
    qsort(lat, calls, sizeof *lat, by_value);
#define PCT(q) (calls ? 1000.0 * lat[(size_t)((q) * calls) < calls ? (size_t)((q) * calls) : calls - 1] : 0)
    printf("{\"stations\": %d, \"connected\": %d, \"failed\": %d, "
           "\"errors\": %d, \"connect_s\": %.2f, \"seconds\": %.2f, \"calls\": %zu, "
           "\"calls_per_s\": %.1f, \"p50_ms\": %.2f, \"p99_ms\": %.2f, \"client_cpu_pct\": %.1f",
           n, connected, failed, errors, connect_s, elapsed, calls, calls / elapsed, PCT(0.5),
           PCT(0.99), 100 * client_cpu / elapsed);
    if (server_pid)
        printf(", \"server_cpu_pct\": %.1f, \"server_cpu_us_per_call\": %.1f",
               100 * server_cpu / elapsed, calls ? 1e6 * server_cpu / calls : 0.0);
    printf("}\n");
    return 0;
}
