/*
 * store_sqlite.h — SQL that is SQLite's alone: for store.c, and for the tests
 * that ask SQLite how it plans it.  Service code never includes this.
 */
#ifndef CIMD_STORE_SQLITE_H
#define CIMD_STORE_SQLITE_H

/*
 * The journal records that can change a table (firmware/replay.h), picked by
 * the kind in the record's own bytes, which the hash chain covers (the kind
 * column is a copy it does not cover): every record begins
 * {"seq":N,"time":T,"prev":"<64 hex>","kind":" (journal_append), so
 * the first '","kind":"' is the record's own.  The partial index
 * journal_tables (schema 9) is made on exactly this expression, and a query
 * with it in its WHERE reads by that index.
 */
#define JOURNAL_TABLES_WHERE                                                                       \
	"substr(CAST(record AS TEXT), instr(CAST(record AS TEXT), '\",\"kind\":\"') + 10, 4) "     \
	"IN ('clie', 'doc.', 'key.', 'reco', 'tabl')"

struct sqlite3;
struct store_conn;
/* The SQLite handle of a connection of the SQLite engine. */
struct sqlite3 *store_sqlite_db(struct store_conn *c);

#endif
