/*
 * ssebench: the load tools of the benchmark, one thread each, epoll.
 *
 *   ssebench sub HOST PORT N [FIRST [INFLIGHT]]
 *       Opens N streams GET /sse/connect/u<i> (i = FIRST .. FIRST+N-1), at most INFLIGHT
 *       connecting at once, and reads them. Every event whose data is "@<ns>" (a
 *       CLOCK_REALTIME timestamp put there by the sender) is recorded with the time it
 *       arrived. Commands on stdin, one answer line each on stdout:
 *         wait_open          -> "open <streams greeted> <failed> <seconds to open all>"
 *         stats              -> "stats <events> <keepalives> <greeted> <closed> <bytes>"
 *         dump PATH          -> writes (sent_ns, received_ns) int64 pairs, forgets them,
 *                               "dumped <count>"
 *         quit
 *
 *   ssebench sub HOST PORT N FIRST INFLIGHT reconnect
 *       The same, and a stream that ends comes back as a browser's EventSource does:
 *       after the last `retry:` it was sent (3 s without one), with `Last-Event-ID` set
 *       to the last id it got, and again after `retry:` if the server refuses it. An
 *       event whose id is not after the last one the stream got counts as repeated.
 *         storm              -> "storm <streams open> <repeated> <reconnects>
 *                               <refused connects> <seconds from `mark` to the last
 *                               stream back>"
 *         mark               -> "marked": starts the clock `storm` reports from
 *       With "reconnect-spread" instead, each wait is the hint times a random factor in
 *       [0.5, 1.5]: what a hub that spread its hints per stream would get.
 *
 *   ssebench pub HOST PORT unicast TOTAL USERS BATCH CONNS RATE
 *       POSTs TOTAL messages to random users u0..u<USERS-1> through /sse/messages, BATCH
 *       per request, on CONNS keep-alive connections; RATE messages/s (0: as fast as the
 *       server accepts). Data is "@<ns>": the send time, or with a RATE the scheduled
 *       time, so a stall cannot hide. Prints "done <accepted> <seconds> <errors>".
 *
 *   ssebench pub HOST PORT broadcast COUNT INTERVAL_MS
 *       POSTs COUNT broadcasts INTERVAL_MS apart. Prints "done <accepted> <seconds> <errors>".
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in server_addr;

static int open_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void raise_file_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ------------------------------------------------------------------ subscriber */

enum { ST_CONNECTING, ST_READING, ST_CLOSED, ST_WAITING };

typedef struct {
    int fd;
    int state;
    int greeted;
    int match;      /* characters of "data: " matched so far */
    int kind;       /* after "data: ": 0 none, 1 digits of a timestamp */
    int64_t value;
    /* reconnect mode: the line being read, the last id, the retry hint */
    char line[48];
    int line_len;
    char last_id[40];
    int64_t last_major, last_minor, event_major, event_minor;
    int event_has_id;
    int retry_ms;
    double reconnect_at;
} Stream;

static const char PATTERN[] = "data: ";
static Stream *streams;
static int64_t *records; /* pairs */
static size_t n_records, cap_records;
static long events, keepalives, greeted, closed_count, failed;
static int reconnect_mode, reconnect_spread;
static long repeated, reconnects, refused, open_now;
static double marked_at, last_back_at;
static long long bytes_in;

static void record(int64_t sent, int64_t received) {
    if (n_records == cap_records) {
        cap_records = cap_records ? cap_records * 2 : 1 << 20;
        records = realloc(records, cap_records * 2 * sizeof(int64_t));
        if (!records) { perror("realloc"); exit(1); }
    }
    records[2 * n_records] = sent;
    records[2 * n_records + 1] = received;
    n_records++;
}

static void scan(Stream *s, const char *buf, ssize_t n, int64_t t) {
    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];
        if (s->kind == 1) {
            if (c >= '0' && c <= '9') {
                s->value = s->value * 10 + (c - '0');
                continue;
            }
            record(s->value, t);
            events++;
            s->kind = 0;
        }
        if (s->match == 6) {
            s->match = 0;
            if (c == '@') {
                s->kind = 1;
                s->value = 0;
            } else if (c == '<') {
                keepalives++;
            } else if (c == 'U' && !s->greeted) {
                s->greeted = 1;
                greeted++;
            }
            continue;
        }
        if (c == PATTERN[s->match]) s->match++;
        else s->match = (c == 'd') ? 1 : 0;
    }
}

/* Reconnect mode: follow `id:` and `retry:` lines too (only their first 47 bytes). */
static void take_line(Stream *s) {
    s->line[s->line_len] = 0;
    if (s->line_len == 0) { /* the end of an event */
        if (s->event_has_id) {
            if (s->event_major < s->last_major ||
                (s->event_major == s->last_major && s->event_minor <= s->last_minor))
                repeated++;
            s->last_major = s->event_major;
            s->last_minor = s->event_minor;
        }
        s->event_has_id = 0;
    } else if (!strncmp(s->line, "id: ", 4)) {
        snprintf(s->last_id, sizeof s->last_id, "%s", s->line + 4);
        char *dash = strchr(s->line + 4, '-');
        s->event_major = atoll(s->line + 4);
        s->event_minor = dash ? atoll(dash + 1) : 0;
        s->event_has_id = 1;
    } else if (!strncmp(s->line, "retry: ", 7)) {
        s->retry_ms = atoi(s->line + 7);
    }
    s->line_len = 0;
}

static void scan_lines(Stream *s, const char *buf, ssize_t n) {
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') take_line(s);
        else if (s->line_len < (int)sizeof s->line - 1) s->line[s->line_len++] = buf[i];
    }
}

static double retry_wait(Stream *s) {
    double wait = (s->retry_ms > 0 ? s->retry_ms : 3000) / 1000.0;
    return reconnect_spread ? wait * (0.5 + (double)rand() / RAND_MAX) : wait;
}

static void stream_ended(Stream *s, double now) {
    if (s->greeted) open_now--;
    s->greeted = 0;
    s->match = s->kind = s->line_len = s->event_has_id = 0;
    s->state = ST_WAITING;
    s->reconnect_at = now + retry_wait(s);
}

static int sub_main(int argc, char **argv) {
    int n = atoi(argv[4]);
    int first = argc > 5 ? atoi(argv[5]) : 0;
    int inflight_max = argc > 6 ? atoi(argv[6]) : 256;
    reconnect_spread = argc > 7 && !strcmp(argv[7], "reconnect-spread");
    reconnect_mode = reconnect_spread || (argc > 7 && !strcmp(argv[7], "reconnect"));
    streams = calloc(n, sizeof(Stream));
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)-1};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    int next = 0, inflight = 0, wait_open = 0;
    double started = mono(), opened_at = 0;
    char buf[65536];
    char cmd[4096];
    size_t cmd_len = 0;
    struct epoll_event evs[512];
    for (;;) {
        while (next < n && inflight < inflight_max) {
            int fd = open_socket();
            Stream *s = &streams[next];
            s->fd = fd;
            if (fd < 0) {
                s->state = ST_CLOSED;
                failed++;
                next++;
                continue;
            }
            s->state = ST_CONNECTING;
            struct epoll_event e = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u64 = next};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
            inflight++;
            next++;
        }
        if (reconnect_mode) {
            double now = mono();
            for (int i = 0; i < next; i++) {
                Stream *s = &streams[i];
                if (s->state != ST_WAITING || s->reconnect_at > now) continue;
                s->fd = open_socket();
                if (s->fd < 0) {
                    s->reconnect_at = now + retry_wait(s);
                    continue;
                }
                s->state = ST_CONNECTING;
                reconnects++;
                struct epoll_event e = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u64 = i};
                epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &e);
            }
        }
        if (!opened_at && greeted + failed + closed_count >= n) {
            opened_at = mono();
        }
        if (wait_open && opened_at) {
            printf("open %ld %ld %.6f\n", greeted, failed + closed_count, opened_at - started);
            fflush(stdout);
            wait_open = 0;
        }
        int k = epoll_wait(ep, evs, 512, reconnect_mode ? 5 : 100);
        int64_t t = now_ns();
        for (int i = 0; i < k; i++) {
            uint64_t id = evs[i].data.u64;
            if (id == (uint64_t)-1) {
                ssize_t r = read(0, cmd + cmd_len, sizeof cmd - 1 - cmd_len);
                if (r <= 0) return 0;
                cmd_len += r;
                char *nl;
                while ((nl = memchr(cmd, '\n', cmd_len))) {
                    *nl = 0;
                    if (!strcmp(cmd, "quit")) return 0;
                    if (!strcmp(cmd, "wait_open")) wait_open = 1;
                    else if (!strcmp(cmd, "mark")) {
                        marked_at = mono();
                        last_back_at = 0;
                        printf("marked\n");
                        fflush(stdout);
                    } else if (!strcmp(cmd, "storm")) {
                        printf("storm %ld %ld %ld %ld %.6f\n", open_now, repeated, reconnects,
                               refused, last_back_at > marked_at ? last_back_at - marked_at : 0);
                        fflush(stdout);
                    }
                    else if (!strcmp(cmd, "stats")) {
                        printf("stats %ld %ld %ld %ld %lld\n", events, keepalives, greeted,
                               closed_count, bytes_in);
                        fflush(stdout);
                    } else if (!strncmp(cmd, "dump ", 5)) {
                        FILE *f = fopen(cmd + 5, "wb");
                        if (f) {
                            fwrite(records, 2 * sizeof(int64_t), n_records, f);
                            fclose(f);
                        }
                        printf("dumped %zu\n", n_records);
                        fflush(stdout);
                        n_records = 0;
                    }
                    size_t used = nl - cmd + 1;
                    memmove(cmd, nl + 1, cmd_len - used);
                    cmd_len -= used;
                }
                continue;
            }
            Stream *s = &streams[id];
            if (s->state == ST_CLOSED) continue;
            if (s->state == ST_CONNECTING) {
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    close(s->fd);
                    if (reconnect_mode && s->reconnect_at > 0) {  /* a reconnect refused */
                        refused++;
                        stream_ended(s, mono());
                        s->greeted = 0;
                        continue;
                    }
                    s->state = ST_CLOSED;
                    failed++;
                    inflight--;
                    continue;
                }
                char req[256];
                char last[64] = "";
                if (s->last_id[0]) snprintf(last, sizeof last, "Last-Event-ID: %s\r\n", s->last_id);
                int len = snprintf(req, sizeof req,
                                   "GET /sse/connect/u%d HTTP/1.1\r\nHost: bench\r\n"
                                   "Accept: text/event-stream\r\n%s\r\n",
                                   first + (int)id, last);
                if (write(s->fd, req, len) != len) {
                    close(s->fd);
                    s->state = ST_CLOSED;
                    failed++;
                    inflight--;
                    continue;
                }
                s->state = ST_READING;
                struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = id};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
                continue;
            }
            for (;;) {
                ssize_t r = read(s->fd, buf, sizeof buf);
                if (r > 0) {
                    bytes_in += r;
                    int was = s->greeted;
                    scan(s, buf, r, t);
                    if (reconnect_mode) scan_lines(s, buf, r);
                    if (!was && s->greeted) {
                        open_now++;
                        if (s->reconnect_at > 0) last_back_at = mono();
                        else inflight--;
                    }
                    if (r < (ssize_t)sizeof buf) break;
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                close(s->fd);
                if (reconnect_mode) {
                    if (!s->greeted && s->reconnect_at == 0) inflight--;
                    stream_ended(s, mono());
                    break;
                }
                if (!s->greeted) inflight--;
                s->state = ST_CLOSED;
                closed_count++;
                break;
            }
        }
    }
}

/* ------------------------------------------------------------------ publisher */

typedef struct {
    int fd;
    int busy;
    char in[8192];
    size_t in_len;
} Conn;

static char *body_buf;

static int send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                usleep(50);
                continue;
            }
            return -1;
        }
        data += w;
        len -= w;
    }
    return 0;
}

/* Returns 1 when a whole response has been read (status in *status), 0 if more is needed. */
static int take_response(Conn *c, int *status) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = end - c->in + 4;
    long length = 0;
    char *cl = memmem(c->in, head, "content-length: ", 16);
    if (!cl) cl = memmem(c->in, head, "Content-Length: ", 16);
    if (cl) length = atol(cl + 16);
    if (c->in_len < head + length) return 0;
    *status = atoi(c->in + 9);
    size_t used = head + length;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    return 1;
}

#ifndef SPIN_S
#define SPIN_S 0.0002
#endif

/* epoll_wait with a timeout in seconds, to the microsecond where the kernel allows. */
static int wait_events(int ep, struct epoll_event *evs, int max, double seconds) {
#ifdef SYS_epoll_pwait2
    static int fine = 1;
    if (fine) {
        struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
        int k = epoll_pwait2(ep, evs, max, &ts, NULL);
        if (k >= 0 || errno != ENOSYS) return k;
        fine = 0;
    }
#endif
    return epoll_wait(ep, evs, max, (int)(seconds * 1000));
}

static int pub_connect(int ep, Conn *c, long index) {
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) {
        perror("connect");
        return 1;
    }
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = (uint64_t)index};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    return 0;
}

static int pub_main(int argc, char **argv) {
    int broadcast = !strcmp(argv[4], "broadcast");
    if (argc < (broadcast ? 7 : 10)) {
        fprintf(stderr, "pub: missing arguments\n");
        return 2;
    }
    long total, users = 1, batch = 1, conns = 1;
    double rate = 0, interval = 0;
    if (broadcast) {
        total = atol(argv[5]);
        interval = atof(argv[6]) / 1000.0;
    } else {
        total = atol(argv[5]);
        users = atol(argv[6]);
        batch = atol(argv[7]);
        conns = atol(argv[8]);
        rate = atof(argv[9]);
    }
    long requests = broadcast ? total : (total + batch - 1) / batch;
    Conn *cs = calloc(conns, sizeof(Conn));
    int ep = epoll_create1(0);
    for (long i = 0; i < conns; i++) {
        if (pub_connect(ep, &cs[i], i)) return 1;
    }
    body_buf = malloc(64 * batch + 4096);
    char head[512];
    long sent_req = 0, done_req = 0, accepted = 0, errors = 0;
    double start = mono();
    int64_t start_ns = now_ns();
    double per_request = broadcast ? interval : (rate > 0 ? batch / rate : 0);
    unsigned int seed = 12345;
    struct epoll_event evs[64];
    while (done_req < requests) {
        /* start every request that is due, on any idle connection */
        for (long i = 0; i < conns && sent_req < requests; i++) {
            if (cs[i].busy) continue;
            double due = start + sent_req * per_request;
            if (per_request > 0 && mono() < due) break;
            int64_t stamp = per_request > 0 ? start_ns + (int64_t)(sent_req * per_request * 1e9)
                                            : now_ns();
            size_t len;
            const char *path;
            long n = 1;
            if (broadcast) {
                len = sprintf(body_buf, "{\"data\":\"@%lld\"}", (long long)stamp);
                path = "/sse/broadcast";
            } else {
                n = batch;
                if ((sent_req + 1) * batch > total) n = total - sent_req * batch;
                len = sprintf(body_buf, "{\"messages\":[");
                for (long m = 0; m < n; m++) {
                    len += sprintf(body_buf + len, "%s{\"user_id\":\"u%u\",\"data\":\"@%lld\"}",
                                   m ? "," : "", rand_r(&seed) % (unsigned)users,
                                   (long long)stamp);
                }
                len += sprintf(body_buf + len, "]}");
                path = "/sse/messages";
            }
            int hl = snprintf(head, sizeof head,
                              "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n\r\n",
                              path, len);
            if (send_all(cs[i].fd, head, hl) || send_all(cs[i].fd, body_buf, len)) {
                perror("write");
                return 1;
            }
            cs[i].busy = (int)n;
            sent_req++;
        }
        /* Sleep until the next request is due, to the microsecond: a timeout in whole
           milliseconds woke early and then spun (timeout 0) for up to a millisecond per
           request, taking the load core from the subscriber and from a Redis there. */
        double wait = 0.1;
        if (per_request > 0 && sent_req < requests) {
            wait = start + sent_req * per_request - mono();
            /* the last SPIN_S before a request is due are spun (timeout 0): waking
               from a sleep is late by the machine's wake-up time */
            wait = wait > SPIN_S ? wait - SPIN_S : 0;
        }
        int k = wait_events(ep, evs, 64, wait);
        for (int e = 0; e < k; e++) {
            Conn *c = &cs[evs[e].data.u64];
            ssize_t r = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                if (c->busy) {
                    fprintf(stderr, "publisher connection closed with a request unanswered\n");
                    return 1;
                }
                /* the server closed an idle keep-alive connection: open another */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->in_len = 0;
                if (pub_connect(ep, c, evs[e].data.u64)) return 1;
                continue;
            }
            c->in_len += r;
            int status;
            while (c->busy && take_response(c, &status)) {
                if (status >= 200 && status < 300) accepted += c->busy;
                else errors++;
                c->busy = 0;
                done_req++;
            }
        }
    }
    printf("done %ld %.6f %ld\n", accepted, mono() - start, errors);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: see the comment at the top of ssebench.c\n");
        return 2;
    }
    raise_file_limit();
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons(atoi(argv[3]));
    inet_pton(AF_INET, argv[2], &server_addr.sin_addr);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "sub")) return sub_main(argc, argv);
    if (!strcmp(argv[1], "pub")) return pub_main(argc, argv);
    fprintf(stderr, "unknown command %s\n", argv[1]);
    return 2;
}
