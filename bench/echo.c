/* The least a server can do for bench/run.py peers' workload, the machine's limit: a websocket
 * server in C (one thread, epoll) that answers each CALL [2,"id",...] with the canned
 * CALLRESULT bench/baselines.py `bare` sends, the id copied. No JSON parsing beyond the id, no
 * validation, no store. Needs OpenSSL's libcrypto (SHA-1 of the handshake).
 *
 *   echo PORT        prints "ready" once listening
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int upgraded;
    size_t have;
    unsigned char buf[16384];
} Conn;

#define MAXFD 65536
static Conn *conns[MAXFD];

static int send_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1; /* a full socket buffer too: these stations wait for answers */
        p += w;
        n -= w;
    }
    return 0;
}

static void consume(Conn *c, size_t n) {
    memmove(c->buf, c->buf + n, c->have - n);
    c->have -= n;
}

/* the HTTP upgrade: 1 done, 0 not all there yet, -1 refused */
static int upgrade(int fd, Conn *c) {
    c->buf[c->have] = 0;
    char *end = strstr((char *)c->buf, "\r\n\r\n"), *k;
    if (!end) return c->have < sizeof c->buf - 1 ? 0 : -1;
    if (!(k = strcasestr((char *)c->buf, "Sec-WebSocket-Key:"))) return -1;
    char key[128];
    int n = 0;
    for (k += 18; *k == ' '; k++) {}
    while (n < 60 && k[n] && k[n] != '\r') key[n] = k[n], n++;
    memcpy(key + n, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char sha[SHA_DIGEST_LENGTH], accept[64];
    SHA1((unsigned char *)key, n + 36, sha);
    EVP_EncodeBlock(accept, sha, sizeof sha);
    char resp[256];
    n = snprintf(resp, sizeof resp,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
                 "\r\nSec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n",
                 accept);
    if (send_all(fd, resp, n)) return -1;
    consume(c, (unsigned char *)end + 4 - c->buf);
    c->upgraded = 1;
    return 1;
}

/* answer every complete frame in c->buf: 0, or -1 to drop the connection */
static int answer(int fd, Conn *c) {
    static char stamp[32];
    static time_t stamped;
    for (;;) {
        unsigned char *b = c->buf;
        if (c->have < 2) return 0;
        size_t len = b[1] & 0x7f, h = 2;
        if (len == 127) return -1;
        if (len == 126) {
            if (c->have < 4) return 0;
            len = (size_t)b[2] << 8 | b[3];
            h = 4;
        }
        if (!(b[1] & 0x80) || h + 4 + len > sizeof c->buf - 1) return -1; /* unmasked, or huge */
        if (c->have < h + 4 + len) return 0;
        unsigned char *mask = b + h, *p = b + h + 4;
        for (size_t j = 0; j < len; j++) p[j] ^= mask[j & 3];
        int op = b[0] & 0x0f;
        if (op == 8) return -1;
        if (op == 1) { /* the id: the first string in the frame */
            char *q = memchr(p, '"', len), *e = q ? memchr(q + 1, '"', p + len - (unsigned char *)q - 1) : NULL;
            if (!e || e - q > 40) return -1;
            time_t t = time(NULL);
            if (t != stamped) {
                struct tm tm;
                strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S.000Z", gmtime_r(&t, &tm));
                stamped = t;
            }
            unsigned char out[160];
            int n = snprintf((char *)out + 2, sizeof out - 2,
                             "[3,\"%.*s\",{\"currentTime\":\"%s\",\"interval\":300,"
                             "\"status\":\"Accepted\"}]",
                             (int)(e - q - 1), q + 1, stamp);
            out[0] = 0x81, out[1] = n; /* under 126 bytes: the id is at most 40 */
            if (send_all(fd, out, n + 2)) return -1;
        } else if (op == 9 && len < 126) {
            unsigned char out[130] = {0x8A, len};
            memcpy(out + 2, p, len);
            if (send_all(fd, out, len + 2)) return -1;
        }
        consume(c, h + 4 + len);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: echo PORT\n");
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) {
        perror("echo: bind");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[1024];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int m = epoll_wait(ep, evs, 1024, -1);
        for (int e = 0; e < m; e++) {
            int fd = evs[e].data.fd, c;
            if (fd == ls) {
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c] = calloc(1, sizeof(Conn));
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            Conn *conn = conns[fd];
            ssize_t r = recv(fd, conn->buf + conn->have, sizeof conn->buf - conn->have - 1, 0);
            if (r < 0 && errno == EAGAIN) continue;
            int ok = r > 0;
            if (ok) {
                conn->have += r;
                ok = conn->upgraded || upgrade(fd, conn) >= 0;
                ok = ok && (!conn->upgraded || answer(fd, conn) == 0);
            }
            if (!ok) {
                close(fd); /* closing removes it from epoll */
                free(conn);
                conns[fd] = NULL;
            }
        }
    }
}
