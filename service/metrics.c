/*
 * metrics.c — the custody process's part of /metrics (Prometheus text
 * exposition format 0.0.4; the publisher adds its own counters).  Its inputs
 * are the database, the key stores, the transparency log and the signer, so
 * the daemon, which owns all four, hands them in; the publication only
 * serves the text (publication_set_metrics).
 */
#include <stdio.h>
#include <stdlib.h>

#include "service.h"

/* The custody process's part of /metrics (the publisher adds its own). */
char *metrics_render(struct store *st, struct custody *c, struct tlog *tl, struct signer *sg)
{
	static const char *const states[] = {"next",	"active",    "retiring",
					     "retired", "destroyed", "revoked"};
	struct store_rows *s = NULL;
	char *out = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&out, &len);
	int64_t head = 0;
	char hash[65];

	if (f == NULL)
		return NULL;
	fprintf(f, "# HELP cimdd_keys Keys by lifecycle state.\n# TYPE cimdd_keys gauge\n");
	for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		int64_t n = 0;
		if (store_query(st, &s, "SELECT count(*) FROM keys WHERE state = ?", "s",
				states[i]) == 0 &&
		    store_next(s) > 0)
			n = store_int(s, 0);
		store_done(st, s);
		s = NULL;
		fprintf(f, "cimdd_keys{state=\"%s\"} %lld\n", states[i], (long long)n);
	}
	journal_head(st, &head, hash);
	fprintf(f,
		"# HELP cimdd_journal_records Records in the audit journal.\n"
		"# TYPE cimdd_journal_records gauge\ncimdd_journal_records %lld\n",
		(long long)head);
	if (tl != NULL) {
		uint64_t size = 0;
		time_t issued = 0;

		tlog_latest(tl, &size, &issued);
		fprintf(f,
			"# HELP cimdd_checkpoint_size Records under the latest signed checkpoint.\n"
			"# TYPE cimdd_checkpoint_size gauge\ncimdd_checkpoint_size %llu\n"
			"# HELP cimdd_checkpoint_timestamp_seconds When the latest checkpoint was "
			"issued (alert when it falls behind checkpoint_interval while the journal "
			"grows).\n"
			"# TYPE cimdd_checkpoint_timestamp_seconds gauge\n"
			"cimdd_checkpoint_timestamp_seconds %lld\n",
			(unsigned long long)size, (long long)issued);
	}
	fprintf(f, "# HELP cimdd_backend_up Whether a key store backend is open.\n"
		   "# TYPE cimdd_backend_up gauge\n");
	for (i = 0; i < custody_count(c); i++)
		fprintf(f, "cimdd_backend_up{backend=\"%s\"} %d\n", custody_name(c, i),
			custody_at(c, i) != NULL && custody_health(c, i) != 0);
	fprintf(f,
		"# HELP cimdd_backend_errors_total Hardware calls that failed.\n"
		"# TYPE cimdd_backend_errors_total counter\ncimdd_backend_errors_total %llu\n",
		(unsigned long long)custody_failures(c));
	if (sg != NULL)
		signer_metrics(sg, f);
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}
