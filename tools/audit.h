/*
 * audit.h — offline checks of what cimdd proves (docs/audit.md): a receipt
 * or `journal prove` answer, a consistency proof, and a whole audit bundle.
 * Nothing here talks to a daemon or the network.
 */
#ifndef CIMD_AUDIT_H
#define CIMD_AUDIT_H

#include <stddef.h>

#include <jansson.h>

/* One check as it is made: ok, its name, what was checked or what failed. */
typedef void (*audit_report_fn)(void *arg, int ok, const char *check, const char *detail);

/*
 * An inclusion proof {"seq","leaf_index","tree_size","record","proof",
 * "checkpoint"}: the checkpoint signed by a key of trust (NULL: its signature is
 * not checked), its size the proof's, and the record's leaf hash proved into
 * its root (RFC 9162 §2.1.3.2).  0, or -CIMD_EVERIFY/-CIMD_EFORMAT with err.
 */
int audit_check_inclusion(const json_t *answer, const json_t *trust, char *err, size_t errlen);
/* A consistency proof {"old_size","tree_size","proof","checkpoint"} from the
 * signed checkpoint old_note to the answer's checkpoint (§2.1.4.2). */
int audit_check_consistency(const char *old_note, size_t old_len, const json_t *answer,
			    const json_t *trust, char *err, size_t errlen);
/* Every check of an audit bundle directory, in the order docs/audit.md gives,
 * against the attestation keys the auditor trusts ({"keys":[...]}), and, when
 * saved is not NULL, against a checkpoint the auditor saved earlier; stops at
 * the first that fails.  0 when all held; 1 when all held but the journal
 * records table differences an operator accepted (cimdd --accept-tables: the
 * "tables" report names each); -CIMD_EVERIFY otherwise. */
int audit_verify_dir(const char *dir, const json_t *trust, const char *saved, size_t saved_len,
		     audit_report_fn report, void *arg);

#endif
