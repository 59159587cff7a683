/* A PKCS#11 test module that misbehaves on request: a shim in front of a real module (SoftHSM by
 * default) whose C_Sign crashes, hangs or leaks when the data to sign says so, and whose
 * C_WaitForSlotEvent really blocks until the test raises an event. It stands for the vendor module
 * the broker exists to contain, and for a module with token events (SoftHSM has none).
 *
 * Build: cc -shared -fPIC -O2 -Wall -o troublemodule.so troublemodule.c -I/usr/include/p11-kit-1 -ldl -lpthread
 *
 * Environment (read at C_Initialize):
 *   TROUBLE_BACKEND     the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   TROUBLE_EVENT_DIR   a directory; each file "event-<slot>" dropped there is one slot event for that
 *                       slot, consumed (removed) by the C_WaitForSlotEvent that reports it
 *
 * C_Sign triggers (the data to sign starts with):
 *   "TROUBLE:ABORT"  abort()                  "TROUBLE:SEGV"  a write through a NULL pointer
 *   "TROUBLE:HANG"   never returns            "TROUBLE:LEAK"  allocates and touches 50 MiB it never
 *                                                             frees, then signs as usual
 * Any other data is signed by the real module. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#define LEAK_BYTES (50u << 20)

static CK_FUNCTION_LIST backend;      /* the real module's functions */
static CK_FUNCTION_LIST exported;     /* ours: the real ones with C_Sign, C_WaitForSlotEvent, ... replaced */
static int loaded;
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int initialized;               /* under gate */
static int waiters;                   /* threads inside C_WaitForSlotEvent, under gate */
static char event_dir[4096];

static int starts_with(CK_BYTE_PTR data, CK_ULONG length, const char *prefix)
{
	size_t n = strlen(prefix);
	return data != NULL && length >= n && memcmp(data, prefix, n) == 0;
}

static CK_RV trouble_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG length, CK_BYTE_PTR signature,
			  CK_ULONG_PTR signature_length)
{
	if (starts_with(data, length, "TROUBLE:ABORT"))
		abort();
	if (starts_with(data, length, "TROUBLE:SEGV")) {
		volatile int *nowhere = NULL;
		*nowhere = 1;
	}
	if (starts_with(data, length, "TROUBLE:HANG"))
		for (;;)
			pause();
	if (starts_with(data, length, "TROUBLE:LEAK")) {
		char *leak = malloc(LEAK_BYTES);
		if (leak == NULL)
			return CKR_HOST_MEMORY;
		memset(leak, 0x5a, LEAK_BYTES); /* resident, not just reserved */
	}
	return backend.C_Sign(session, data, length, signature, signature_length);
}

/* Takes one pending event file, if any: its slot in *slot. */
static int take_event(CK_SLOT_ID *slot)
{
	DIR *dir;
	struct dirent *entry;
	int found = 0;

	if (event_dir[0] == '\0' || (dir = opendir(event_dir)) == NULL)
		return 0;
	while (!found && (entry = readdir(dir)) != NULL) {
		char path[sizeof event_dir + 300];
		unsigned long number;
		char *end;
		if (strncmp(entry->d_name, "event-", 6) != 0)
			continue;
		number = strtoul(entry->d_name + 6, &end, 10);
		if (*end != '\0')
			continue;
		snprintf(path, sizeof path, "%s/%s", event_dir, entry->d_name);
		if (unlink(path) == 0) { /* another waiter may have taken it first */
			*slot = number;
			found = 1;
		}
	}
	closedir(dir);
	return found;
}

static CK_RV trouble_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved)
{
	CK_RV rv;

	if (slot == NULL || reserved != NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&gate);
	if (!initialized) {
		pthread_mutex_unlock(&gate);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	waiters++;
	for (;;) {
		struct timespec until;
		if (!initialized) { /* C_Finalize while waiting: PKCS#11 says the wait ends with this */
			rv = CKR_CRYPTOKI_NOT_INITIALIZED;
			break;
		}
		if (take_event(slot)) {
			rv = CKR_OK;
			break;
		}
		if (flags & CKF_DONT_BLOCK) {
			rv = CKR_NO_EVENT;
			break;
		}
		/* Event files are polled; C_Finalize wakes the wait at once. */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 20 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&wake, &gate, &until);
	}
	waiters--;
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&gate);
	return rv;
}

static CK_RV trouble_Initialize(CK_VOID_PTR args)
{
	const char *dir = getenv("TROUBLE_EVENT_DIR");
	CK_RV rv = backend.C_Initialize(args);
	if (rv != CKR_OK)
		return rv;
	pthread_mutex_lock(&gate);
	snprintf(event_dir, sizeof event_dir, "%s", dir ? dir : "");
	initialized = 1;
	pthread_mutex_unlock(&gate);
	return CKR_OK;
}

static CK_RV trouble_Finalize(CK_VOID_PTR reserved)
{
	pthread_mutex_lock(&gate);
	if (!initialized) {
		pthread_mutex_unlock(&gate);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	initialized = 0;
	pthread_cond_broadcast(&wake);
	while (waiters > 0) /* the waiters leave with CKR_CRYPTOKI_NOT_INITIALIZED before the backend goes */
		pthread_cond_wait(&wake, &gate);
	pthread_mutex_unlock(&gate);
	return backend.C_Finalize(reserved);
}

static CK_RV trouble_GetInfo(CK_INFO_PTR info)
{
	CK_RV rv = backend.C_GetInfo(info);
	if (rv == CKR_OK) {
		memset(info->manufacturerID, ' ', sizeof info->manufacturerID);
		memcpy(info->manufacturerID, "p11proxy trouble module", 23);
	}
	return rv;
}

static CK_RV load_backend(void)
{
	const char *path = getenv("TROUBLE_BACKEND");
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST_PTR list;
	void *library;

	if (loaded)
		return CKR_OK;
	library = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
	if (library == NULL) {
		fprintf(stderr, "troublemodule: %s\n", dlerror());
		return CKR_GENERAL_ERROR;
	}
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (get == NULL || get(&list) != CKR_OK)
		return CKR_GENERAL_ERROR;
	backend = *list;
	exported = *list;
	exported.C_Initialize = trouble_Initialize;
	exported.C_Finalize = trouble_Finalize;
	exported.C_GetInfo = trouble_GetInfo;
	exported.C_GetFunctionList = C_GetFunctionList;
	exported.C_Sign = trouble_Sign;
	exported.C_WaitForSlotEvent = trouble_WaitForSlotEvent;
	loaded = 1;
	return CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	CK_RV rv;
	if (list == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&gate);
	rv = load_backend();
	pthread_mutex_unlock(&gate);
	if (rv == CKR_OK)
		*list = &exported;
	return rv;
}
