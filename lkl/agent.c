/*
 * stdpkt-agent: the resident command agent inside a User-Mode Linux guest.
 *
 *   build:  gcc -static -O2 -Wall -Wextra -o stdpkt-agent lkl/agent.c
 *   usage:  stdpkt-agent /dev/tty1
 *
 * The host wires a second console, con1=fd:R,fd:W, to a pair of pipes; the
 * guest sees it as /dev/tty1.  The agent puts that tty in raw mode, writes
 * the line "STDPKT-AGENT 1\n" and from then on reads and writes frames only.
 * One poll() loop serves every request; nothing ever blocks on one of them.
 *
 * Frame (both directions): 12-byte header, then `len` bytes of payload.
 *   "SP"  u8 type  u8 flags(0)  u32 id  u32 len        (little-endian)
 * Payload fields: u32/i32 little-endian; blob = u32 length + bytes.
 *
 * Requests (host -> guest)
 *   'E' EXEC      u32 flags (bit 0: stdin given), u32 argc, argc blobs,
 *                 u32 envc, envc blobs "KEY=VALUE" (added to the agent's env),
 *                 blob cwd ("" = /), blob stdin
 *   'K' KILL      empty: SIGKILL the process group of EXEC `id`; no reply of
 *                 its own (the EXEC's reply then reports -9)
 *   'R' READ      blob path
 *   'M' READMANY  u32 n, n blobs path
 *   'P' PING      empty
 * Replies (guest -> host) carry the id of their request
 *   'e' EXEC done i32 status (exit code, or -signal), u32 flags (bit 0: stdout
 *                 truncated, bit 1: stderr truncated), blob stdout, blob stderr
 *   'r' READ      i32 errno (0: ok), blob data
 *   'm' READMANY  u32 n, n x (i32 errno, blob data)
 *   'p' PONG      empty
 *   'x' ERROR     i32 errno, blob message (spawn failed, malformed request...)
 *   'a' ACK       id 0, u32 count of bytes read from the tty so far (mod 2^32)
 *
 * Flow control: the host keeps at most WINDOW bytes sent but not yet acked.
 * UML's console driver never re-arms its input after the tty throttles
 * (line_throttle deactivates the host fd; line_unthrottle only drains it), so
 * if n_tty's 4 KiB input buffer ever fills, input stops for good.  The agent
 * acks every ACK_EVERY bytes it reads, ahead of replies not yet started.
 *
 * Children are started with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK),
 * no page-table copy, which matters under UML's ptrace) in their own process
 * group, with every signal reset to default.  A child's stdout/stderr are
 * collected up to OUT_CAP bytes each; past that they are drained and dropped.
 * When the child has exited but its pipes stay open (a background process
 * kept them), the reply goes out GRACE_MS later with what was read.  The agent
 * is a child subreaper, so orphans of its children are reaped here too.
 * EOF or an error on the tty means the host is gone: kill every job, exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define HELLO "STDPKT-AGENT 1\n"
#define HDR 12
#define MAX_FRAME (64u << 20)  /* largest request accepted */
#define OUT_CAP (16u << 20)    /* per stream of one EXEC */
#define READ_CAP (8u << 20)    /* per file of READ/READMANY */
#define MAX_JOBS 256
#define GRACE_MS 200
#define ACK_EVERY 1024          /* the host's window is 3072: stays below 4096-128 */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

struct buf { char *p; size_t len, cap; };

struct chunk { struct chunk *next; char *p; size_t len, off; int starts_frame; };

struct job {
	struct job *next;
	uint32_t id;
	pid_t pgid;          /* = pid of the child */
	int running;         /* 0 once reaped */
	int status;          /* exit code or -signal */
	int in_fd, out_fd, err_fd;  /* our ends, -1 when closed */
	char *in; size_t in_len, in_off;
	struct buf out, err;
	unsigned trunc;
	long long grace_until;  /* ms; 0 = not waiting */
};

static int tty = -1;
static int sig_pipe[2];
static struct chunk *oq_head, *oq_tail;
static struct job *jobs;
static int njobs;
static struct buf inbuf;
static uint32_t consumed, acked;  /* bytes read from the tty; last count acked */

static void fatal(const char *what)
{
	fprintf(stderr, "stdpkt-agent: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) fatal("malloc");
	return p;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra <= b->cap) return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra) cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) fatal("realloc");
	b->p = p;
	b->cap = cap;
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put32(char *p, uint32_t v)
{
	p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static uint32_t get32(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void buf_add32(struct buf *b, uint32_t v)
{
	char t[4];
	put32(t, v);
	buf_add(b, t, 4);
}

/* ---- output queue: chunks we own, written to the tty when it has room ---- */

/* Queue p (ownership taken); starts_frame: p begins with a frame header. */
static void queue(char *p, size_t len, int starts_frame)
{
	struct chunk *c = xmalloc(sizeof *c);
	*c = (struct chunk){ .p = p, .len = len, .starts_frame = starts_frame };
	if (oq_tail) oq_tail->next = c; else oq_head = c;
	oq_tail = c;
}

static char *header(int type, uint32_t id, size_t len, size_t room);

/* Put an ACK frame before the first frame not yet started. */
static void queue_ack(void)
{
	char *h = header('a', 0, 4, 4);
	put32(h + HDR, consumed);
	acked = consumed;
	struct chunk *c = xmalloc(sizeof *c);
	*c = (struct chunk){ .p = h, .len = HDR + 4, .starts_frame = 1 };
	struct chunk **at = &oq_head;
	while (*at && !((*at)->starts_frame && (*at)->off == 0)) at = &(*at)->next;
	c->next = *at;
	*at = c;
	if (!c->next) oq_tail = c;
}

static char *header(int type, uint32_t id, size_t len, size_t room)
{
	char *h = xmalloc(HDR + room);
	h[0] = 'S'; h[1] = 'P'; h[2] = type; h[3] = 0;
	put32(h + 4, id);
	put32(h + 8, len);
	return h;
}

/* Queue a frame whose payload is b (ownership taken). */
static void send_buf(int type, uint32_t id, struct buf *b)
{
	queue(header(type, id, b->len, 0), HDR, 1);
	if (b->len) queue(b->p, b->len, 0); else free(b->p);
	*b = (struct buf){ 0 };
}

static void send_error(uint32_t id, int err, const char *msg)
{
	struct buf b = { 0 };
	buf_add32(&b, err);
	buf_add32(&b, strlen(msg));
	buf_add(&b, msg, strlen(msg));
	send_buf('x', id, &b);
}

static void kill_all_and_exit(void);

static void flush_out(void)
{
	while (oq_head) {
		struct chunk *c = oq_head;
		ssize_t n = write(tty, c->p + c->off, c->len - c->off);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) return;
			kill_all_and_exit();  /* EIO: the host end is gone */
		}
		c->off += n;
		if (c->off < c->len) continue;
		oq_head = c->next;
		if (!oq_head) oq_tail = NULL;
		free(c->p);
		free(c);
	}
}

/* ---- request parsing ---- */

struct cur { const char *p; size_t left; int bad; };

static uint32_t take32(struct cur *c)
{
	if (c->left < 4) { c->bad = 1; return 0; }
	uint32_t v = get32(c->p);
	c->p += 4; c->left -= 4;
	return v;
}

static const char *take_blob(struct cur *c, size_t *len)
{
	*len = take32(c);
	if (c->bad || *len > c->left) { c->bad = 1; *len = 0; return ""; }
	const char *p = c->p;
	c->p += *len; c->left -= *len;
	return p;
}

/* A blob as a C string; NUL bytes inside are malformed. */
static char *take_str(struct cur *c)
{
	size_t n;
	const char *p = take_blob(c, &n);
	if (memchr(p, 0, n)) c->bad = 1;
	return strndup(p, n);
}

/* ---- READ / READMANY: one open, reads until EOF, never a fork ---- */

static void read_into(struct buf *b, const char *path)
{
	size_t start = b->len, got = 0;
	int err = 0;
	buf_reserve(b, 8 + 16384);
	b->len += 8;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) err = errno;
	while (fd >= 0) {
		buf_reserve(b, 16384);
		ssize_t n = read(fd, b->p + b->len, b->cap - b->len);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) { err = errno; break; }
		if (n == 0) break;
		b->len += n;
		got += n;
		if (got > READ_CAP) { err = EFBIG; break; }
	}
	if (fd >= 0) close(fd);
	if (err) { b->len = start + 8; got = 0; }
	put32(b->p + start, err);
	put32(b->p + start + 4, got);
}

/* ---- EXEC ---- */

static struct job *find_job(uint32_t id)
{
	for (struct job *j = jobs; j; j = j->next)
		if (j->id == id) return j;
	return NULL;
}

/* The agent's environment with `adds` ("KEY=VALUE") replacing or appended. */
static char **merge_env(char **adds, size_t nadd)
{
	size_t n = 0;
	while (environ[n]) n++;
	char **env = xmalloc((n + nadd + 1) * sizeof *env);
	memcpy(env, environ, n * sizeof *env);
	for (size_t i = 0; i < nadd; i++) {
		size_t klen = strcspn(adds[i], "=") + 1;
		size_t k = 0;
		while (k < n && strncmp(env[k], adds[i], klen)) k++;
		env[k] = adds[i];
		if (k == n) n++;
	}
	env[n] = NULL;
	return env;
}

static void set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void do_exec(uint32_t id, struct cur *c)
{
	uint32_t flags = take32(c), argc = take32(c), envc, i;
	char **argv = NULL, **adds = NULL, **env = NULL, *cwd = NULL, *msg = NULL;
	const char *in;
	size_t in_len;
	int inp[2] = { -1, -1 }, outp[2] = { -1, -1 }, errp[2] = { -1, -1 }, rc;

	if (c->bad || argc == 0 || argc > c->left / 4) { send_error(id, EINVAL, "malformed EXEC"); return; }
	argv = calloc(argc + 1, sizeof *argv);
	for (i = 0; i < argc; i++) argv[i] = take_str(c);
	envc = take32(c);
	if (c->bad || envc > c->left / 4) envc = 0, c->bad = 1;
	adds = calloc(envc + 1, sizeof *adds);
	for (i = 0; i < envc; i++) adds[i] = take_str(c);
	cwd = take_str(c);
	in = take_blob(c, &in_len);
	if (c->bad) { send_error(id, EINVAL, "malformed EXEC"); goto out; }
	if (njobs >= MAX_JOBS || find_job(id)) {
		send_error(id, EAGAIN, njobs >= MAX_JOBS ? "too many running commands" : "id in use");
		goto out;
	}
	if (pipe2(outp, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) { rc = errno; goto fail; }
	if (flags & 1) {
		if (pipe2(inp, O_CLOEXEC)) { rc = errno; goto fail; }
	} else if ((inp[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		rc = errno; goto fail;
	}

	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
	posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
	posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	posix_spawn_file_actions_addchdir_np(&fa, *cwd ? cwd : "/");
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
				 POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	env = merge_env(adds, envc);
	/* posix_spawnp searches the caller's PATH: use the child's for the lookup. */
	char *old_path = strdup(getenv("PATH") ? getenv("PATH") : DEFAULT_PATH);
	for (i = 0; env[i]; i++)
		if (!strncmp(env[i], "PATH=", 5)) setenv("PATH", env[i] + 5, 1);
	pid_t pid;
	rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, env);
	setenv("PATH", old_path, 1);
	free(old_path);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc) goto fail;

	close(inp[0]); close(outp[1]); close(errp[1]);
	struct job *j = xmalloc(sizeof *j);
	*j = (struct job){ .next = jobs, .id = id, .pgid = pid, .running = 1,
			   .in_fd = inp[1], .out_fd = outp[0], .err_fd = errp[0] };
	if (j->in_fd >= 0 && in_len) {
		j->in = xmalloc(in_len);
		memcpy(j->in, in, in_len);
		j->in_len = in_len;
	} else if (j->in_fd >= 0) {
		close(j->in_fd);
		j->in_fd = -1;
	}
	if (j->in_fd >= 0) set_nonblock(j->in_fd);
	set_nonblock(j->out_fd);
	set_nonblock(j->err_fd);
	jobs = j;
	njobs++;
	goto out;
fail:
	for (i = 0; i < 2; i++) {
		if (inp[i] >= 0) close(inp[i]);
		if (outp[i] >= 0) close(outp[i]);
		if (errp[i] >= 0) close(errp[i]);
	}
	if (asprintf(&msg, "cannot run %s%s%s: %s", argv[0], *cwd ? " in " : "", cwd,
		     strerror(rc)) < 0) msg = NULL;
	send_error(id, rc, msg ? msg : "cannot run");
out:
	for (i = 0; argv && argv[i]; i++) free(argv[i]);
	for (i = 0; adds && adds[i]; i++) free(adds[i]);
	free(argv); free(adds); free(env); free(cwd); free(msg);
}

static void close_fd(int *fd)
{
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

/* Read what a child wrote; keep up to OUT_CAP, drop the rest. */
static void drain(struct job *j, int *fd, struct buf *b, unsigned trunc_bit)
{
	static char scratch[65536];
	for (;;) {
		ssize_t n;
		if (b->len < OUT_CAP) {
			buf_reserve(b, 65536);
			size_t room = b->cap - b->len;
			if (room > OUT_CAP - b->len) room = OUT_CAP - b->len;
			n = read(*fd, b->p + b->len, room);
			if (n > 0) b->len += n;
		} else {
			n = read(*fd, scratch, sizeof scratch);
			if (n > 0) j->trunc |= trunc_bit;
		}
		if (n > 0) continue;
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && errno == EAGAIN) return;
		close_fd(fd);  /* EOF or error */
		return;
	}
}

static void feed_stdin(struct job *j)
{
	while (j->in_off < j->in_len) {
		ssize_t n = write(j->in_fd, j->in + j->in_off, j->in_len - j->in_off);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && errno == EAGAIN) return;
		if (n < 0) break;  /* EPIPE: the child closed its stdin */
		j->in_off += n;
	}
	close_fd(&j->in_fd);
	free(j->in);
	j->in = NULL;
}

static void finish(struct job *j)
{
	char *h = header('e', j->id, 16 + j->out.len + j->err.len, 12);
	put32(h + HDR, j->status);
	put32(h + HDR + 4, j->trunc);
	put32(h + HDR + 8, j->out.len);
	queue(h, HDR + 12, 1);
	if (j->out.len) queue(j->out.p, j->out.len, 0); else free(j->out.p);
	char *m = xmalloc(4);
	put32(m, j->err.len);
	queue(m, 4, 0);
	if (j->err.len) queue(j->err.p, j->err.len, 0); else free(j->err.p);
	close_fd(&j->in_fd);
	free(j->in);
}

static void reap(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (struct job *j = jobs; j; j = j->next) {
			if (j->pgid != pid || !j->running) continue;
			j->running = 0;
			j->status = WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
			close_fd(&j->in_fd);
			j->grace_until = now_ms() + GRACE_MS;
		}
		/* other pids: orphans adopted as subreaper, just reaped */
	}
}

/* Send the replies of finished jobs; give up on pipes held open past the grace. */
static void settle_jobs(void)
{
	long long now = now_ms();
	for (struct job **pj = &jobs; *pj;) {
		struct job *j = *pj;
		if (!j->running && (j->out_fd >= 0 || j->err_fd >= 0) && now >= j->grace_until) {
			if (j->out_fd >= 0) drain(j, &j->out_fd, &j->out, 1);
			if (j->err_fd >= 0) drain(j, &j->err_fd, &j->err, 2);
			close_fd(&j->out_fd);
			close_fd(&j->err_fd);
		}
		if (j->running || j->out_fd >= 0 || j->err_fd >= 0) { pj = &j->next; continue; }
		finish(j);
		*pj = j->next;
		free(j);
		njobs--;
	}
}

/* ---- dispatch ---- */

static void handle(int type, uint32_t id, const char *p, size_t len)
{
	struct cur c = { p, len, 0 };
	struct buf b = { 0 };
	struct job *j;
	uint32_t n;

	switch (type) {
	case 'P':
		send_buf('p', id, &b);
		break;
	case 'R': {
		char *path = take_str(&c);
		if (c.bad) { send_error(id, EINVAL, "malformed READ"); free(path); break; }
		read_into(&b, path);
		free(path);
		send_buf('r', id, &b);
		break;
	}
	case 'M':
		n = take32(&c);
		if (n > c.left / 4) c.bad = 1;
		buf_add32(&b, n);
		for (uint32_t i = 0; i < n && !c.bad; i++) {
			char *path = take_str(&c);
			if (!c.bad) read_into(&b, path);
			free(path);
		}
		if (c.bad) { free(b.p); send_error(id, EINVAL, "malformed READMANY"); break; }
		send_buf('m', id, &b);
		break;
	case 'E':
		do_exec(id, &c);
		break;
	case 'K':
		if ((j = find_job(id))) kill(-j->pgid, SIGKILL);
		break;
	default:
		send_error(id, EINVAL, "unknown request type");
	}
}

static void kill_all_and_exit(void)
{
	for (struct job *j = jobs; j; j = j->next) kill(-j->pgid, SIGKILL);
	exit(0);
}

static void read_tty(void)
{
	size_t off = 0;
	for (;;) {
		buf_reserve(&inbuf, 65536);
		ssize_t n = read(tty, inbuf.p + inbuf.len, inbuf.cap - inbuf.len);
		if (n > 0) { inbuf.len += n; consumed += n; continue; }
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && errno == EAGAIN) break;
		kill_all_and_exit();  /* EOF / EIO: the host end is gone */
	}
	if ((uint32_t)(consumed - acked) >= ACK_EVERY) queue_ack();
	while (inbuf.len - off >= HDR) {
		const char *h = inbuf.p + off;
		uint32_t len = get32(h + 8);
		if (h[0] != 'S' || h[1] != 'P' || len > MAX_FRAME) {
			/* No way to find the next frame boundary: drop what we have. */
			send_error(0, EPROTO, "bad frame header; input discarded");
			off = inbuf.len;
			break;
		}
		if (inbuf.len - off < HDR + len) break;
		handle(h[2], get32(h + 4), h + HDR, len);
		off += HDR + len;
	}
	memmove(inbuf.p, inbuf.p + off, inbuf.len - off);
	inbuf.len -= off;
}

static void on_sigchld(int sig)
{
	int saved = errno;
	(void)sig;
	if (write(sig_pipe[1], "c", 1) < 0) { /* full: a wakeup is pending anyway */ }
	errno = saved;
}

int main(int argc, char **argv)
{
	struct termios t;

	if (argc != 2) {
		fprintf(stderr, "usage: stdpkt-agent TTY\n");
		return 2;
	}
	for (int fd = 0; fd < 3; fd++)  /* so that pipes never land on 0-2 */
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0) fatal("/dev/null");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	setenv("PATH", DEFAULT_PATH, 0);
	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK)) fatal("pipe");
	struct sigaction sa = { .sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
	sigaction(SIGCHLD, &sa, NULL);

	tty = open(argv[1], O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (tty < 0) fatal(argv[1]);
	if (tcgetattr(tty, &t)) fatal("tcgetattr");
	cfmakeraw(&t);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(tty, TCSAFLUSH, &t)) fatal("tcsetattr");
	queue(strdup(HELLO), strlen(HELLO), 0);

	struct pollfd *pfd = NULL;
	struct job **pjob = NULL;
	int *pwhich = NULL;
	size_t pcap = 0;
	for (;;) {
		size_t need = 2 + 3 * (size_t)njobs, n = 0;
		if (need > pcap) {
			pcap = need * 2;
			pfd = realloc(pfd, pcap * sizeof *pfd);
			pjob = realloc(pjob, pcap * sizeof *pjob);
			pwhich = realloc(pwhich, pcap * sizeof *pwhich);
			if (!pfd || !pjob || !pwhich) fatal("realloc");
		}
		pfd[n++] = (struct pollfd){ tty, POLLIN | (oq_head ? POLLOUT : 0), 0 };
		pfd[n++] = (struct pollfd){ sig_pipe[0], POLLIN, 0 };
		long long wake = -1;
		for (struct job *j = jobs; j; j = j->next) {
			int fds[3] = { j->in_fd, j->out_fd, j->err_fd };
			for (int w = 0; w < 3; w++) {
				if (fds[w] < 0) continue;
				pfd[n] = (struct pollfd){ fds[w], w ? POLLIN : POLLOUT, 0 };
				pjob[n] = j;
				pwhich[n++] = w;
			}
			if (!j->running && (wake < 0 || j->grace_until < wake)) wake = j->grace_until;
		}
		int timeout = -1;
		if (wake >= 0) {
			long long d = wake - now_ms();
			timeout = d < 0 ? 0 : d > 1000 ? 1000 : (int)d;
		}
		if (poll(pfd, n, timeout) < 0) {
			if (errno == EINTR) continue;
			fatal("poll");
		}
		if (pfd[1].revents) {
			char tmp[256];
			while (read(sig_pipe[0], tmp, sizeof tmp) > 0) {}
			reap();
		}
		for (size_t i = 2; i < n; i++) {
			struct job *j = pjob[i];
			if (!pfd[i].revents) continue;
			if (pwhich[i] == 0 && j->in_fd >= 0) feed_stdin(j);
			if (pwhich[i] == 1 && j->out_fd >= 0) drain(j, &j->out_fd, &j->out, 1);
			if (pwhich[i] == 2 && j->err_fd >= 0) drain(j, &j->err_fd, &j->err, 2);
		}
		settle_jobs();
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) read_tty();
		flush_out();
	}
}
