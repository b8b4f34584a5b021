/*
 * conns.c — which connections the publisher keeps (publisher.h): a cap per
 * source prefix, a reserve for new peers, and eviction of the oldest idle
 * connection of the heaviest prefix when every place is taken.
 *
 * Why: libmicrohttpd's own limits are a total and a count per address.  17
 * addresses holding 64 idle TLS connections each took all 1024 places, and
 * /healthz waited about 9 s for a timeout to free one (issue 15, item 5).
 * Addresses are cheap for a network peer (a /64 holds 2^64 of them), so the
 * count is per prefix; and a full table makes room by closing a connection
 * that is doing nothing, taken from whoever holds the most.
 *
 * One table under one mutex, shared by libmicrohttpd's worker threads.  Its
 * size is bounded (PUB_CONNS_MAX + PUB_CONNS_SLACK slots) and every scan is
 * over it: at most about a thousand entries, a few microseconds, next to the
 * TLS handshake each connection costs.  An evicted connection is shut down
 * (shutdown(2): its worker then reads end of file and closes it) and keeps
 * its slot until libmicrohttpd says it is closed, which it does before it
 * closes the descriptor (daemon.c, MHD_cleanup_connections): a slot's
 * descriptor, used under the mutex, is never one that was reused.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "publisher.h"

#define SLOTS (PUB_CONNS_MAX + PUB_CONNS_SLACK)

struct slot {
	struct MHD_Connection *c; /* NULL: free */
	int fd;
	unsigned peer;	/* index into peers[] */
	uint64_t since; /* ms: opened, or its last answer finished */
	size_t uri_len; /* the request target as received (pub_conns_uri) */
	uint8_t busy;	/* answering a request */
	uint8_t evicted;
};

struct peer {
	uint8_t key[PUB_PREFIX_LEN];
	unsigned n;    /* its open connections, not counting evicted ones */
	unsigned refs; /* slots naming it, evicted ones included; 0: free */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot slots[SLOTS];
static struct peer peers[SLOTS];
static unsigned open_n, used_n; /* open: not evicted; used: slots taken */
static unsigned long refused_prefix, refused_reserve, refused_full, evicted_n;

int pub_peer_prefix(const struct sockaddr *sa, socklen_t len, uint8_t ret_key[PUB_PREFIX_LEN])
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	const uint8_t *a;

	memset(ret_key, 0, PUB_PREFIX_LEN);
	if (sa != NULL && sa->sa_family == AF_INET &&
	    len >= (socklen_t)sizeof(struct sockaddr_in)) {
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
		ret_key[0] = 4;
		memcpy(ret_key + 1, a, 3); /* a /24 */
		return 0;
	}
	if (sa != NULL && sa->sa_family == AF_INET6 &&
	    len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		if (memcmp(a, mapped, sizeof(mapped)) == 0) { /* RFC 4291 §2.5.5.2 */
			ret_key[0] = 4;
			memcpy(ret_key + 1, a + 12, 3);
		} else {
			ret_key[0] = 6;
			memcpy(ret_key + 1, a, 8); /* a /64 */
		}
		return 0;
	}
	return -EAFNOSUPPORT;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The peer with this key, or SLOTS. */
static unsigned peer_find(const uint8_t *key)
{
	unsigned i;

	for (i = 0; i < SLOTS; i++)
		if (peers[i].refs > 0 && memcmp(peers[i].key, key, PUB_PREFIX_LEN) == 0)
			return i;
	return SLOTS;
}

/* Whether a connection from a prefix holding n may be opened now: 0, or
 * which counter its refusal goes to.  Under mu. */
static unsigned long *refusal(unsigned n)
{
	if (n >= PUB_CONNS_PER_PREFIX)
		return &refused_prefix;
	if (open_n >= PUB_CONNS_MAX - PUB_CONNS_RESERVE && n >= PUB_CONNS_LIGHT)
		return &refused_reserve;
	if (used_n >= SLOTS)
		return &refused_full;
	return NULL;
}

enum MHD_Result pub_conns_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	uint8_t key[PUB_PREFIX_LEN];
	unsigned long *why;
	unsigned p;

	(void)cls;
	pub_peer_prefix(addr, addrlen, key);
	pthread_mutex_lock(&mu);
	p = peer_find(key);
	if ((why = refusal(p < SLOTS ? peers[p].n : 0)) != NULL)
		(*why)++;
	pthread_mutex_unlock(&mu);
	return why == NULL ? MHD_YES : MHD_NO;
}

/* The oldest idle connection of the heaviest prefix, but not `self`: its
 * index, or SLOTS when every other connection is answering.  Under mu. */
static unsigned victim(unsigned self)
{
	unsigned i, best = SLOTS;

	for (i = 0; i < SLOTS; i++) {
		const struct slot *s = &slots[i];

		if (s->c == NULL || s->evicted || s->busy || i == self)
			continue;
		if (best == SLOTS || peers[s->peer].n > peers[slots[best].peer].n ||
		    (peers[s->peer].n == peers[slots[best].peer].n && s->since < slots[best].since))
			best = i;
	}
	return best;
}

/* Shut a tracked connection down; libmicrohttpd closes it, and its slot is
 * freed then (NOTIFY_CLOSED).  Under mu. */
static void evict(unsigned i)
{
	struct slot *s = &slots[i];

	shutdown(s->fd, SHUT_RDWR);
	s->evicted = 1;
	peers[s->peer].n--;
	open_n--;
}

/* A new connection: tracked in a slot, or shut down at once (a refusal that
 * the accept policy could not see: another worker took the place first). */
static void started(struct MHD_Connection *c, void **socket_context)
{
	const union MHD_ConnectionInfo *ci, *fi;
	uint8_t key[PUB_PREFIX_LEN];
	unsigned long *why;
	unsigned p, i, v;

	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	fi = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (fi == NULL)
		return;
	pub_peer_prefix(ci ? ci->client_addr : NULL,
			ci && ci->client_addr && ci->client_addr->sa_family == AF_INET6
			    ? (socklen_t)sizeof(struct sockaddr_in6)
			    : (socklen_t)sizeof(struct sockaddr_in),
			key);
	pthread_mutex_lock(&mu);
	p = peer_find(key);
	if ((why = refusal(p < SLOTS ? peers[p].n : 0)) != NULL) {
		(*why)++;
		shutdown(fi->connect_fd, SHUT_RDWR);
		goto out;
	}
	for (i = 0; slots[i].c != NULL; i++) /* used_n < SLOTS: one is free */
		;
	if (p == SLOTS) {
		for (p = 0; peers[p].refs > 0; p++) /* as many peers as slots */
			;
		memcpy(peers[p].key, key, PUB_PREFIX_LEN);
	}
	slots[i] = (struct slot){.c = c, .fd = fi->connect_fd, .peer = p, .since = now_ms()};
	peers[p].n++;
	peers[p].refs++;
	open_n++;
	used_n++;
	*socket_context = &slots[i];
	if (open_n > PUB_CONNS_MAX) {
		/* Full: the newcomer takes the place of a connection doing
		 * nothing, from the prefix that holds the most; if all are
		 * answering, the newcomer goes. */
		v = victim(i);
		if (v == SLOTS) {
			refused_full++;
			v = i;
		} else {
			evicted_n++;
		}
		evict(v);
	}
out:
	pthread_mutex_unlock(&mu);
}

static void closed(void **socket_context)
{
	struct slot *s = *socket_context;

	if (s == NULL)
		return;
	pthread_mutex_lock(&mu);
	if (!s->evicted) {
		peers[s->peer].n--;
		open_n--;
	}
	peers[s->peer].refs--;
	used_n--;
	memset(s, 0, sizeof(*s));
	pthread_mutex_unlock(&mu);
	*socket_context = NULL;
}

void pub_conns_notify(void *cls, struct MHD_Connection *c, void **socket_context,
		      enum MHD_ConnectionNotificationCode code)
{
	(void)cls;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		started(c, socket_context);
	else if (code == MHD_CONNECTION_NOTIFY_CLOSED)
		closed(socket_context);
}

static struct slot *slot_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *i =
	    MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return i != NULL ? i->socket_context : NULL;
}

void pub_conns_busy(struct MHD_Connection *c)
{
	struct slot *s = slot_of(c);

	if (s == NULL)
		return;
	pthread_mutex_lock(&mu);
	s->busy = 1;
	pthread_mutex_unlock(&mu);
}

void pub_conns_done(void *cls, struct MHD_Connection *c, void **con_cls,
		    enum MHD_RequestTerminationCode toe)
{
	struct slot *s = slot_of(c);

	(void)cls;
	(void)con_cls;
	(void)toe;
	if (s == NULL)
		return;
	pthread_mutex_lock(&mu);
	s->busy = 0;
	s->since = now_ms(); /* kept alive and used: young again */
	pthread_mutex_unlock(&mu);
}

/* Called on the request line before libmicrohttpd splits or decodes the
 * target: strlen() stops at the first NUL byte, which the handler compares
 * with where the target really ended.  Only the connection's worker thread
 * touches uri_len. */
void *pub_conns_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct slot *s = slot_of(c);

	(void)cls;
	if (s != NULL)
		s->uri_len = uri != NULL ? strlen(uri) : 0;
	return NULL;
}

size_t pub_conns_uri_len(struct MHD_Connection *c)
{
	struct slot *s = slot_of(c);

	return s != NULL ? s->uri_len : (size_t)-1;
}

void pub_conns_stats(struct pub_conns_stats *ret)
{
	pthread_mutex_lock(&mu);
	*ret = (struct pub_conns_stats){.open = open_n,
					.refused_prefix = refused_prefix,
					.refused_reserve = refused_reserve,
					.refused_full = refused_full,
					.evicted = evicted_n};
	pthread_mutex_unlock(&mu);
}
