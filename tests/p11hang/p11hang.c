/*
 * p11hang.c — a PKCS#11 module for tests: SoftHSM2's own, but for C_Sign,
 * which hangs while the file named by $P11HANG_FILE exists, as a token that
 * stops answering mid-command does (a network HSM that stalls).  SoftHSM2 is
 * in-process, so nothing else can make it hang; every other function is
 * SoftHSM2's, on the same token.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"

static CK_FUNCTION_LIST list;
static CK_C_Sign softhsm_sign;

static CK_RV hang_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
		       CK_ULONG_PTR sig_len)
{
	const char *f = getenv("P11HANG_FILE");

	while (f != NULL && access(f, F_OK) == 0)
		usleep(5000);
	return softhsm_sign(s, data, len, sig, sig_len);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret)
{
	CK_FUNCTION_LIST_PTR real;
	CK_C_GetFunctionList get;
	void *dl;

	if (list.C_Sign == NULL) {
		if ((dl = dlopen(SOFTHSM_MODULE, RTLD_NOW | RTLD_LOCAL)) == NULL ||
		    (get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL ||
		    get(&real) != CKR_OK)
			return CKR_GENERAL_ERROR;
		list = *real;
		softhsm_sign = real->C_Sign;
		list.C_Sign = hang_sign;
	}
	*ret = &list;
	return CKR_OK;
}
