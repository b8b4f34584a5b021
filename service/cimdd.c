/*
 * cimdd.c — the daemon: arguments, start-up, the event loop, signals.
 *
 *   cimdd -c FILE [-f]
 *   cimdd --dev DIR [--backend pkcs11|tpm2] [--port N]
 *
 * Start-up: configuration, state database, key stores, reconciliation of
 * hardware and database, admin socket.  The loop: poll(2) on the admin socket
 * and a signalfd; once a second the key lifecycle scheduler.  SIGTERM/SIGINT
 * shut down cleanly; SIGHUP reloads operators, policies and durations without
 * dropping connections.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "service.h"

#define PROBE_EVERY 2 /* seconds between probes of the hardware */

/* The daemon: what the modules work on (struct svc: the configuration, the
 * database, the key stores), which each is given when it is made, and what
 * this file alone holds. */
struct cimdd {
	struct svc svc;
	struct signer *signer; /* the signing socket (signer.c), or NULL */
	struct tlog *tlog;     /* checkpoints and proofs (tlog.c) */
	int dev;	       /* a --dev instance */
	int accept_rollback;   /* --accept-rollback: an older database is journaled, not refused */
};

static void usage(FILE *f)
{
	fprintf(f, "usage: cimdd -c FILE [-f]\n"
		   "       cimdd --dev DIR [--backend pkcs11|tpm2] [--port N]\n"
		   "\n"
		   "  -c, --config FILE   run from a configuration file (cimdd.conf(5))\n"
		   "  -f, --foreground    stay in the foreground and log to stderr\n"
		   "      --dev DIR       create (first time) and run a development instance in\n"
		   "                      DIR, in the foreground\n"
		   "      --backend NAME  key store of a new dev instance (default pkcs11)\n"
		   "      --port N        HTTPS port of a new dev instance (default 8443)\n"
		   "      --accept-rollback\n"
		   "                      start on a state database older than the TPM's counter\n"
		   "                      (a restored backup), journaling that it was accepted\n"
		   "                      (docs/audit.md, \"Rollback\")\n"
		   "      --accept-tables\n"
		   "                      start on state tables that are not what the journal\n"
		   "                      made them, journaling each difference accepted\n"
		   "                      (docs/audit.md, \"The tables and the journal\")\n"
		   "  -h, --help          this text\n"
		   "  -V, --version       the version\n");
}

/* /metrics: the daemon owns every input. */
static char *daemon_metrics(void *arg)
{
	struct cimdd *d = arg;

	return metrics_render(d->svc.st, d->svc.custody, d->tlog, d->signer);
}

/* SIGHUP: operators, two-person rule and durations take effect now; what
 * needs a restart (paths, backends, base_url) is reported and kept. */
static void reload(struct cimdd *d)
{
	struct cimd_config *n = NULL, *o = d->svc.cfg;
	char err[512], roles[64];
	json_t *f, *ops;
	size_t i;

	if (config_load(o->path, &n, err, sizeof(err)) < 0) {
		log_err("reload: %s; keeping the running configuration", err);
		return;
	}
	if (strcmp(n->state_dir, o->state_dir) != 0 || strcmp(n->base_url, o->base_url) != 0 ||
	    strcmp(n->admin_socket, o->admin_socket) != 0 || n->n_backends != o->n_backends)
		log_warn(
		    "reload: state_dir, base_url, sockets and backends change only at restart");
	memcpy(o->operators, n->operators, sizeof(o->operators));
	o->n_operators = n->n_operators;
	o->two_person_rule = n->two_person_rule;
	o->jwks_max_age = n->jwks_max_age;
	o->cimd_max_age = n->cimd_max_age;
	o->assertion_default_ttl = n->assertion_default_ttl;
	o->assertion_max_ttl = n->assertion_max_ttl;
	o->clock_skew = n->clock_skew;
	o->destroy_delay = n->destroy_delay;
	o->rotate_every = n->rotate_every;
	o->checkpoint_interval = n->checkpoint_interval;
	config_free(&n);
	signer_configure(d->signer, o);
	log_info("reload: %zu operators, two-person rule %s", o->n_operators,
		 o->two_person_rule ? "on" : "off");
	/* What an auditor needs to see changed: who may do what, and the rules. */
	f = json_pack("{sbsIsIsIsIsIsIsI}", "two_person_rule", o->two_person_rule, "jwks_max_age",
		      (json_int_t)o->jwks_max_age, "assertion_max_ttl",
		      (json_int_t)o->assertion_max_ttl, "clock_skew", (json_int_t)o->clock_skew,
		      "destroy_delay", (json_int_t)o->destroy_delay, "rotate_every",
		      (json_int_t)o->rotate_every, "cimd_max_age", (json_int_t)o->cimd_max_age,
		      "checkpoint_interval", (json_int_t)o->checkpoint_interval);
	ops = json_array();
	for (i = 0; f != NULL && ops != NULL && i < o->n_operators; i++)
		json_array_append_new(
		    ops, json_pack("{sssiss}", "name", o->operators[i].name, "uid",
				   (int)o->operators[i].uid, "roles",
				   config_roles_str(o->operators[i].roles, roles, sizeof(roles))));
	if (f != NULL)
		json_object_set_new(f, "operators", ops);
	else
		json_decref(ops);
	if (store_begin(d->svc.st) == 0 &&
	    journal_append(d->svc.st, "config.reload", "cimdd", f, NULL) == 0)
		store_commit(d->svc.st);
	else
		store_rollback(d->svc.st);
	json_decref(f);
}

static int daemonize(void)
{
	pid_t pid;
	int fd;

	if ((pid = fork()) < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -errno;
	if ((pid = fork()) < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (chdir("/") < 0)
		return -errno;
	if ((fd = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

static void banner(const struct cimdd *d)
{
	fprintf(stderr,
		"\ncimdd %s development instance\n"
		"  base URL      %s (CA certificate: %s)\n"
		"  admin socket  %s\n"
		"  sign socket   %s\n"
		"  configuration %s\n"
		"  two-person rule is OFF: a dev instance has a single operator\n"
		"\nTry:\n"
		"  echo '{\"client_name\":\"Agent "
		"A\",\"redirect_uris\":[\"http://127.0.0.1:9000/cb\"]}' "
		"> /tmp/agent-a.json\n"
		"  build/bin/cimdctl -s %s client add agent-a --owner team-a --metadata "
		"/tmp/agent-a.json\n"
		"  build/bin/cimdctl -s %s doc approve agent-a 1\n"
		"then:\n"
		"  curl --cacert %s %s/clients/agent-a/jwks.json\n"
		"and a client assertion:\n"
		"  build/bin/cimdctl -s %s client allow agent-a --uid %u\n"
		"  build/bin/cimdctl -s %s client audience agent-a --add https://as.example.com\n"
		"  build/bin/cimd-assert -s %s --client-id %s/clients/agent-a --aud "
		"https://as.example.com\n\n",
		CIMD_VERSION, d->svc.cfg->base_url,
		d->svc.cfg->tls_cert ? d->svc.cfg->tls_cert : "-", d->svc.cfg->admin_socket,
		d->svc.cfg->sign_socket, d->svc.cfg->path, d->svc.cfg->admin_socket,
		d->svc.cfg->admin_socket, d->svc.cfg->tls_cert ? d->svc.cfg->tls_cert : "-",
		d->svc.cfg->base_url, d->svc.cfg->admin_socket, (unsigned)getuid(),
		d->svc.cfg->admin_socket, d->svc.cfg->sign_socket, d->svc.cfg->base_url);
}

/* What the command line asks for. */
struct args {
	const char *conf, *dev, *backend;
	int fg, port, accept_rollback, accept_tables;
};

/* -1: go on; otherwise the exit status (--help, --version, a bad argument). */
static int parse_args(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},  {"foreground", no_argument, NULL, 'f'},
	    {"dev", required_argument, NULL, 'D'},     {"backend", required_argument, NULL, 'B'},
	    {"port", required_argument, NULL, 'P'},    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},       {"accept-rollback", no_argument, NULL, 'R'},
	    {"accept-tables", no_argument, NULL, 'T'}, {NULL, 0, NULL, 0},
	};
	char *end;
	int c;

	*a = (struct args){.backend = "pkcs11", .port = 8443};
	while ((c = getopt_long(argc, argv, "c:fhV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			a->conf = optarg;
			break;
		case 'f':
			a->fg = 1;
			break;
		case 'D':
			a->dev = optarg;
			a->fg = 1;
			break;
		case 'B':
			a->backend = optarg;
			break;
		case 'R':
			a->accept_rollback = 1;
			break;
		case 'T':
			a->accept_tables = 1;
			break;
		case 'P':
			a->port = (int)strtol(optarg, &end, 10);
			if (*end != '\0' || a->port < 1 || a->port > 65535) {
				fprintf(stderr, "cimdd: --port %s is not a port number\n", optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("cimdd %s\n", CIMD_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || (a->conf == NULL) == (a->dev == NULL)) {
		usage(stderr);
		return 2;
	}
	return -1;
}

/* SIGTERM, SIGINT, SIGHUP and SIGCHLD go to the signalfd alone: blocked before
 * any thread exists (key stores start workers), so that every thread inherits
 * the mask.  A signal ignored by whoever started us (a shell's background job
 * ignores SIGINT) would be discarded, never reaching the signalfd: each is
 * reset to its default first. */
static int block_signals(sigset_t *ret_mask)
{
	static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD};
	size_t i;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(ret_mask);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		signal(sigs[i], SIG_DFL);
		sigaddset(ret_mask, sigs[i]);
	}
	return sigprocmask(SIG_BLOCK, ret_mask, NULL) < 0 ? -errno : 0;
}

/* The running daemon: what main owns and frees. */
struct daemon {
	struct cimdd d;
	struct publication *pub;
	struct admin_server *admin;
	sigset_t mask;
	int sfd, lockfd;
	pid_t swtpm; /* --dev tpm2: the simulator we started */
	time_t probed_at;
};

static void journal_daemon(struct cimdd *d, const char *kind)
{
	if (store_begin(d->svc.st) == 0 &&
	    journal_append(d->svc.st, kind, "cimdd", NULL, NULL) == 0)
		store_commit(d->svc.st);
	else
		store_rollback(d->svc.st);
}

/* The state directory, its lock (one daemon per directory: a second one would
 * share the database and the hardware and take over the admin socket), and the
 * database. */
static int open_state(struct daemon *m)
{
	struct cimdd *d = &m->d;
	char path[1100], err[512];

	if (mkdir(d->svc.cfg->state_dir, 0700) < 0 && errno != EEXIST) {
		log_err("state_dir %s: %s", d->svc.cfg->state_dir, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/cimdd.lock", d->svc.cfg->state_dir);
	if ((m->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 ||
	    flock(m->lockfd, LOCK_EX | LOCK_NB) < 0) {
		log_err("%s: %s", path,
			errno == EWOULDBLOCK ? "another cimdd runs on this state directory"
					     : strerror(errno));
		return -1;
	}
	if (store_open_config(d->svc.cfg, &d->svc.st, err, sizeof(err)) < 0 ||
	    store_claim(d->svc.st, d->svc.cfg->node, err, sizeof(err)) < 0) {
		log_err("state database: %s", err);
		return -1;
	}
	return 0;
}

/* Start-up, in the order the appliance's guarantees need (docs/scaling.md,
 * docs/audit.md): -1 when it cannot start (logged). */
static int daemon_start(struct daemon *m, const struct args *a)
{
	struct cimdd *d = &m->d;
	char devconf[1200], err[512];
	const char *conf = a->conf;
	int r;

	if (a->dev != NULL) {
		if (dev_prepare(a->dev, a->backend, a->port, devconf, sizeof(devconf), err,
				sizeof(err)) < 0 ||
		    dev_start(a->dev, &m->swtpm, err, sizeof(err)) < 0) {
			log_err("--dev %s: %s", a->dev, err);
			return -1;
		}
		conf = devconf;
		if (m->swtpm > 0)
			log_info("swtpm simulator started (pid %d)", (int)m->swtpm);
	}
	if (config_load(conf, &d->svc.cfg, err, sizeof(err)) < 0) {
		log_err("%s", err);
		return -1;
	}
	d->dev = a->dev != NULL;
	d->accept_rollback = a->accept_rollback;
	if ((r = custody_new(d->svc.cfg, &d->svc.custody)) < 0) {
		log_err("backends: %s", strerror(-r));
		return -1;
	}
	/* Detach before any thread, database handle or socket exists: a fork
	 * keeps only the calling thread, and SQLite handles must not cross it. */
	if (!a->fg && (r = daemonize()) < 0) {
		log_err("daemonize: %s", strerror(-r));
		return -1;
	}
	if (open_state(m) < 0)
		return -1;
	/* The TPM now; the other stores in a thread while the database's
	 * publication goes out (custody.c). */
	custody_open_start(d->svc.custody);
	/* Before anything appends or touches hardware keys: a database older
	 * than the TPM's counter is refused here (tlog.c). */
	if (tlog_open(&d->svc, d->accept_rollback, &d->tlog, err, sizeof(err)) < 0) {
		log_err("journal: %s", err);
		return -1;
	}
	/* Before anything is published, attested or signed: the tables are
	 * what the journal made them, or the operator journals that they
	 * stand as they are (tables.c). */
	if (tables_check(&d->svc, a->accept_tables, err, sizeof(err)) < 0) {
		log_err("tables: %s", err);
		return -1;
	}
	/* One of the cluster's nodes (a single appliance is node "local"):
	 * refused if another node revoked this one (nodes.c). */
	if (nodes_join(&d->svc, err, sizeof(err)) < 0) {
		log_err("node: %s", err);
		return -1;
	}
	/* What the database says is published while the other key stores
	 * open and before the hardware is listed (each a second at 20,000
	 * objects on SoftHSM2): reconciliation marks what it changes, and the
	 * next turns publish that (docs/scaling.md). */
	if ((r = publication_new(&d->svc, d->tlog, &m->pub)) < 0) {
		log_err("publisher: %s", strerror(-r));
		return -1;
	}
	publication_set_metrics(m->pub, daemon_metrics, d);
	publication_start(m->pub);
	custody_open_join(d->svc.custody);
	publication_step(m->pub);
	keys_reconcile(&d->svc);
	attest_keys_ensure(&d->svc);
	/* Before the admin socket: once an operator can connect, so can workloads. */
	if (signer_start(&d->svc, d->tlog, &d->signer, err, sizeof(err)) < 0) {
		log_err("sign socket: %s", err);
		return -1;
	}
	publication_set_signer(m->pub, d->signer);
	if (admin_server_new(&d->svc, d->tlog, &m->admin, err, sizeof(err)) < 0) {
		log_err("admin socket: %s", err);
		return -1;
	}
	if ((m->sfd = signalfd(-1, &m->mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		log_err("signalfd: %s", strerror(errno));
		return -1;
	}
	journal_daemon(d, "daemon.start");
	/* Nothing published anywhere: no key waits for publication. */
	if (d->svc.cfg->listen == NULL && d->svc.cfg->export_dir == NULL)
		signer_publish_nothing(d->signer);
	log_info("cimdd %s: %s, admin socket %s, two-person rule %s", CIMD_VERSION,
		 d->svc.cfg->base_url, d->svc.cfg->admin_socket,
		 d->svc.cfg->two_person_rule ? "on" : "off");
	if (d->dev)
		banner(d);
	return 0;
}

/* Once a second: hardware that came back, the lifecycle scheduler, the
 * checkpoint, the health probe.  -1: a rollback was found (stop, status 1). */
static int daemon_tick(struct daemon *m, time_t now)
{
	struct cimdd *d = &m->d;

	/* A backend that comes up after start: the rollback check first (if it
	 * is the TPM), then it is reconciled and gets its attestation key. */
	if (custody_open_missing(d->svc.custody)) {
		if (tlog_check_rollback(&d->svc, d->tlog) == -CIMD_EVERIFY)
			return -1;
		keys_reconcile(&d->svc);
		attest_keys_ensure(&d->svc);
	}
	if (nodes_heartbeat(&d->svc, now) < 0)
		return -1; /* another node revoked this one */
	keys_tick(&d->svc, now);
	if (tlog_tick(&d->svc, d->tlog, 0) == -CIMD_EVERIFY)
		return -1; /* rollback found once the TPM answered */
	/* Is the hardware there?  Reflected in /healthz, /metrics and status
	 * within PROBE_EVERY seconds. */
	if (now - m->probed_at >= PROBE_EVERY) {
		m->probed_at = now;
		if (custody_probe(d->svc.custody, keys_probe_key, &d->svc))
			publication_health(m->pub); /* health is public */
	}
	return 0;
}

/* The loop: poll(2) on the signalfd and the admin socket.  The exit status:
 * 0 on SIGTERM/SIGINT, 1 on a failure. */
static int daemon_run(struct daemon *m)
{
	struct pollfd fds[CIMD_ADMIN_CONNS_MAX + 3];
	struct signalfd_siginfo si;
	time_t last_tick = 0;
	int more = 1; /* the first turn publishes at once */
	size_t n;

	for (;;) {
		fds[0] = (struct pollfd){.fd = m->sfd, .events = POLLIN};
		/* Another node's change (PostgreSQL NOTIFY): looked at at once,
		 * rather than at the next second's look. */
		fds[1] = (struct pollfd){.fd = store_listen(m->d.svc.st), .events = POLLIN};
		n = 2 + admin_server_pollfds(m->admin, fds + 2, sizeof(fds) / sizeof(fds[0]) - 2);
		if (poll(fds, n, admin_server_busy(m->admin) || more ? 0 : 1000) < 0 &&
		    errno != EINTR) {
			log_err("poll: %s", strerror(errno));
			return 1;
		}
		if (fds[1].fd >= 0 && (fds[1].revents & (POLLIN | POLLERR | POLLHUP)))
			store_notified(m->d.svc.st);
		if ((fds[0].revents & POLLIN) && read(m->sfd, &si, sizeof(si)) == sizeof(si)) {
			if (si.ssi_signo == SIGHUP) {
				reload(&m->d);
				publication_reconfigured(m->pub);
			} else if (si.ssi_signo == SIGCHLD) {
				publication_child(m->pub);
			} else {
				log_info("signal %d: shutting down", (int)si.ssi_signo);
				return 0;
			}
		}
		admin_server_dispatch(m->admin, fds + 2, n - 2);
		if (time(NULL) != last_tick) {
			last_tick = time(NULL);
			if (daemon_tick(m, last_tick) < 0)
				return 1;
		}
		/* Whatever changed since the last turn (the change markers of
		 * schema 7): the signer drops those clients' policies, their
		 * attestations are issued before what they attest is published,
		 * and what changed is recorded and handed to the publisher and
		 * export_dir (publish.c), a bounded slice per turn. */
		more = publication_step(m->pub);
	}
}

/* After the loop: no assertion after the stop record and, on a clean stop,
 * everything up to it under a checkpoint. */
static void daemon_stop(struct daemon *m, int rc)
{
	publication_set_signer(m->pub, NULL); /* it holds no pointer to what is freed */
	signer_stop(&m->d.signer);
	journal_daemon(&m->d, "daemon.stop");
	if (rc == 0)
		tlog_tick(&m->d.svc, m->d.tlog, 1);
}

static void daemon_free(struct daemon *m)
{
	if (m->pub != NULL)
		publication_set_signer(m->pub, NULL);
	signer_stop(&m->d.signer);
	publication_free(&m->pub);
	tlog_free(&m->d.tlog);
	if (m->sfd >= 0)
		close(m->sfd);
	if (m->lockfd >= 0)
		close(m->lockfd);
	admin_server_free(&m->admin);
	custody_free(&m->d.svc.custody);
	store_free(&m->d.svc.st);
	config_free(&m->d.svc.cfg);
	if (m->swtpm > 0) {
		kill(m->swtpm, SIGTERM);
		waitpid(m->swtpm, NULL, 0);
	}
}

int main(int argc, char **argv)
{
	struct daemon m = {.sfd = -1, .lockfd = -1};
	struct args a;
	int rc;

	if ((rc = parse_args(argc, argv, &a)) >= 0)
		return rc;
	if ((rc = block_signals(&m.mask)) < 0) {
		fprintf(stderr, "cimdd: sigprocmask: %s\n", strerror(-rc));
		return 1;
	}
	setenv("TSS2_LOG", "all+none", 0); /* we log hardware errors ourselves, once */
	umask(077);
	log_init("cimdd", a.fg);
	publication_caps_init(); /* before any thread: every thread inherits it */
	rc = 1;
	if (daemon_start(&m, &a) == 0) {
		rc = daemon_run(&m);
		daemon_stop(&m, rc);
	}
	daemon_free(&m);
	return rc;
}
