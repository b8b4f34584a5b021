/*
 * fuzz_config — cimdd.conf(5) (service/config.c, config_parse) on arbitrary bytes.
 *
 * Beyond "no crash": a refused file says why, as LABEL:LINE: reason or
 * LABEL: reason; an accepted one has what finish() promises (state_dir,
 * base_url, a backend, both socket paths, default_ttl <= max_ttl).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define LABEL "fuzz.conf"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cimd_config *cfg = NULL;
	char err[1024] = "";

	if (config_parse(LABEL, (const char *)data, size, &cfg, err, sizeof(err)) == 0) {
		if (cfg == NULL || cfg->state_dir == NULL || cfg->base_url == NULL ||
		    cfg->n_backends == 0 || cfg->admin_socket == NULL || cfg->sign_socket == NULL ||
		    config_backend(cfg, cfg->default_backend) == NULL ||
		    cfg->assertion_default_ttl > cfg->assertion_max_ttl)
			abort();
		config_free(&cfg);
		if (cfg != NULL)
			abort();
	} else if (strncmp(err, LABEL ":", strlen(LABEL) + 1) != 0 || cfg != NULL) {
		abort();
	}
	return 0;
}
