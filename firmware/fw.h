/*
 * fw.h — the whole custody core, for code that uses both of its halves.
 *
 * firmware/ is two libraries (docs/architecture.md):
 *   fmt.h  libcimdfmt.a  the formats and their verifiers, no hardware: what
 *                        cimdctl's offline checks link, and all they link
 *   ks.h   libcimdks.a   the key store, its PKCS#11 and TPM 2.0 backends,
 *                        and the signing halves of the formats
 * The daemon (service/) and the tests use both, through this header.  A
 * program that must not trust the appliance includes fmt.h alone.
 */
#ifndef CIMD_FW_H
#define CIMD_FW_H

#include "fmt.h"
#include "ks.h"

#endif /* CIMD_FW_H */
