/*
 * proto_err.c — the protocol's error names (docs/protocol.md, "Errors"): one
 * table for the admin socket and the signing socket, so that a code has the
 * same name on both and in the signer's metrics.
 */
#include "service.h"

static const char *const names[PE_N] = {
    [PE_OK] = "ok",
    [PE_BAD_REQUEST] = "bad_request",
    [PE_TOO_LARGE] = "too_large",
    [PE_FORBIDDEN] = "forbidden",
    [PE_UNKNOWN_CLIENT] = "unknown_client",
    [PE_AUDIENCE] = "audience_not_allowed",
    [PE_NO_ACTIVE_KEY] = "no_active_key",
    [PE_UNAVAILABLE] = "backend_unavailable",
    [PE_RATE_LIMITED] = "rate_limited",
    [PE_INTERNAL] = "internal",
    [PE_NOT_FOUND] = "not_found",
    [PE_NOT_CHECKPOINTED] = "not_checkpointed",
    [PE_CONFLICT] = "conflict",
    [PE_INVALID_DOCUMENT] = "invalid_document",
};

const char *proto_err_name(enum proto_err e)
{
	return (size_t)e < PE_N && names[e] != NULL ? names[e] : "internal";
}
