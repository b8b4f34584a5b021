/*
 * cimd-assert — prints a fresh client assertion from cimdd's signing socket.
 *
 *   cimd-assert [-s SOCKET] --client-id URL --aud URL [--ttl SECONDS]
 *
 * stdout: the assertion and a newline, nothing else.  On failure one line on
 * stderr and the status: 1 refused (asking again will not help), 2 usage,
 * 3 unavailable (no daemon, no hardware, journal failure: may pass later).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cimd.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: cimd-assert [-s SOCKET] --client-id URL --aud URL [--ttl SECONDS]\n"
		   "       cimd-assert [-s SOCKET] --receipt JTI\n"
		   "\n"
		   "Prints a client assertion (RFC 7523) signed by cimdd for CLIENT_ID, to be\n"
		   "presented to AUD, the authorization server's token endpoint or issuer.\n"
		   "\n"
		   "  -s, --socket PATH    signing socket (default $CIMD_SIGN_SOCKET, else\n"
		   "                       " CIMD_DEFAULT_SOCKET ")\n"
		   "  -c, --client-id URL  the client's client_id (its CIMD document URL)\n"
		   "  -a, --aud URL        the audience, one of the client's allowed audiences\n"
		   "  -t, --ttl SECONDS    lifetime (default: the client's policy)\n"
		   "  -r, --receipt JTI    print instead the receipt of an assertion this uid\n"
		   "                       was issued: its journal record, inclusion proof and\n"
		   "                       signed checkpoint (JSON; docs/audit.md)\n"
		   "  -h, --help           this text\n"
		   "\n"
		   "Exit status: 0 printed, 1 refused, 2 usage, 3 unavailable (or, for a\n"
		   "receipt, not under a checkpoint yet: ask again).\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, NULL, 's'},
	    {"client-id", required_argument, NULL, 'c'},
	    {"aud", required_argument, NULL, 'a'},
	    {"ttl", required_argument, NULL, 't'},
	    {"receipt", required_argument, NULL, 'r'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *sock = NULL, *client_id = NULL, *aud = NULL, *jti = NULL;
	struct cimd *c = NULL;
	char *jwt = NULL, *end;
	long ttl = 0;
	int o, r;

	while ((o = getopt_long(argc, argv, "s:c:a:t:r:h", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			sock = optarg;
			break;
		case 'c':
			client_id = optarg;
			break;
		case 'a':
			aud = optarg;
			break;
		case 'r':
			jti = optarg;
			break;
		case 't':
			errno = 0;
			ttl = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || end == optarg || ttl < 1) {
				fprintf(stderr,
					"cimd-assert: --ttl %s is not a number of seconds\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || (jti == NULL && (client_id == NULL || aud == NULL)) ||
	    (jti != NULL && (client_id != NULL || aud != NULL || ttl != 0))) {
		usage(stderr);
		return 2;
	}
	if ((r = cimd_open(sock, &c)) == CIMD_OK)
		r = jti != NULL ? cimd_receipt(c, jti, &jwt)
				: cimd_assert(c, client_id, aud, ttl, &jwt, NULL);
	if (r != CIMD_OK) {
		fprintf(stderr, "cimd-assert: %s\n", cimd_message(c));
		cimd_close(&c);
		return cimd_status_refused(r) ? 1 : 3;
	}
	cimd_close(&c);
	if (printf("%s\n", jwt) < 0 || fflush(stdout) != 0) {
		free(jwt);
		return 3;
	}
	free(jwt);
	return 0;
}
