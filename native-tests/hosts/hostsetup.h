/* Set-up shared by the native test hosts: load a PKCS#11 module by path, initialise it for a
 * threaded host (CKF_OS_LOCKING_OK), open a session on the first slot with a token and log the
 * user in (another client of the same broker may have done so already). Returns 0 on success,
 * after printing what failed otherwise.
 *
 * HOST_SETUP_LOCK=FILE: the set-up runs under an exclusive lock on FILE. SoftHSM's file store does
 * not take several processes initialising and logging in to one token at the same moment (loaded
 * directly, 18 of 60 such processes saw CKR_GENERAL_ERROR or CKR_TOKEN_NOT_PRESENT); with a
 * module instance per broker client, the proxy behaves the same, so hosts started together
 * take turns for their set-up and run their calls concurrently after it. */
#ifndef P11PROXY_HOSTSETUP_H
#define P11PROXY_HOSTSETUP_H
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static int host_setup_unlocked(const char *module, const char *pin, CK_FUNCTION_LIST_PTR *functions, CK_SLOT_ID *slot,
			       CK_SESSION_HANDLE *login);

static int host_setup(const char *module, const char *pin, CK_FUNCTION_LIST_PTR *functions, CK_SLOT_ID *slot,
		      CK_SESSION_HANDLE *login)
{
	const char *lock_path = getenv("HOST_SETUP_LOCK");
	int lock = -1, result;

	if (lock_path && *lock_path) {
		lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (lock < 0 || flock(lock, LOCK_EX) != 0) { perror(lock_path); return 1; }
	}
	result = host_setup_unlocked(module, pin, functions, slot, login);
	if (lock >= 0)
		close(lock);
	return result;
}

static int host_setup_unlocked(const char *module, const char *pin, CK_FUNCTION_LIST_PTR *functions, CK_SLOT_ID *slot,
			       CK_SESSION_HANDLE *login)
{
	void *library = dlopen(module, RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CK_RV rv;

	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(functions) != CKR_OK) { fprintf(stderr, "C_GetFunctionList failed\n"); return 1; }
	if ((rv = (*functions)->C_Initialize(&args)) != CKR_OK) { fprintf(stderr, "C_Initialize: 0x%lx\n", rv); return 1; }
	if ((rv = (*functions)->C_GetSlotList(CK_TRUE, slots, &count)) != CKR_OK || count == 0) {
		fprintf(stderr, "C_GetSlotList: 0x%lx, %lu slots\n", rv, count);
		return 1;
	}
	*slot = slots[0];
	if ((rv = (*functions)->C_OpenSession(*slot, CKF_SERIAL_SESSION, NULL, NULL, login)) != CKR_OK) {
		fprintf(stderr, "C_OpenSession: 0x%lx\n", rv);
		return 1;
	}
	rv = (*functions)->C_Login(*login, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) { fprintf(stderr, "C_Login: 0x%lx\n", rv); return 1; }
	return 0;
}
#endif
