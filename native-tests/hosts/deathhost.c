/* Broker death under load: THREADS threads sign in a loop until a call fails; the test kills
 * the broker meanwhile. Reports how long after the first failure the last thread got its error,
 * then waits for the broker to come back and checks the module reconnects by itself
 * (C_OpenSession works again, the old session is invalid).
 * usage: deathhost MODULE PIN THREADS */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE key;
static double failed_at[64];
static double failed_wall[64]; /* CLOCK_REALTIME, comparable with the test's record of the kill */
static CK_RV failed_with[64];

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static double wall(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *worker(void *argument)
{
	int id = (int)(long)argument;
	CK_SESSION_HANDLE session;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	unsigned char data[32] = "load", signature[512];
	CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session);
	while (rv == CKR_OK) {
		CK_ULONG length = sizeof signature;
		rv = f->C_SignInit(session, &mechanism, key);
		if (rv == CKR_OK)
			rv = f->C_Sign(session, data, sizeof data, signature, &length);
	}
	failed_at[id] = now();
	failed_wall[id] = wall();
	failed_with[id] = rv;
	return NULL;
}

int main(int argc, char **argv)
{
	void *library = dlopen(argv[1], RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16, found = 0;
	CK_SESSION_HANDLE login, again;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE find[] = { { CKA_CLASS, &cls, sizeof cls } };
	CK_SESSION_INFO info;
	int threads = argc > 3 ? atoi(argv[3]) : 4, i;
	pthread_t tids[64];
	double first = 1e300, last = 0, last_wall = 0;
	CK_RV rv = CKR_GENERAL_ERROR;

	if (argc != 4 || !library) { fprintf(stderr, "usage: deathhost MODULE PIN THREADS\n"); return 2; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) return 1;
	if (f->C_GetSlotList(CK_TRUE, slots, &count) != CKR_OK || count == 0) return 1;
	slot = slots[0];
	if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &login) != CKR_OK ||
	    f->C_Login(login, CKU_USER, (CK_UTF8CHAR_PTR)argv[2], strlen(argv[2])) != CKR_OK ||
	    f->C_FindObjectsInit(login, find, 1) != CKR_OK || f->C_FindObjects(login, &key, 1, &found) != CKR_OK ||
	    f->C_FindObjectsFinal(login) != CKR_OK || found != 1) { fprintf(stderr, "set-up failed\n"); return 1; }
	printf("ready\n");
	fflush(stdout);
	for (i = 0; i < threads; i++)
		pthread_create(&tids[i], NULL, worker, (void *)(long)i);
	for (i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	for (i = 0; i < threads; i++) {
		if (failed_at[i] < first) first = failed_at[i];
		if (failed_at[i] > last) last = failed_at[i];
		if (failed_wall[i] > last_wall) last_wall = failed_wall[i];
		if (failed_with[i] != CKR_DEVICE_ERROR && failed_with[i] != CKR_DEVICE_REMOVED)
			fprintf(stderr, "thread %d ended with 0x%lx\n", i, failed_with[i]);
	}
	printf("all %d threads got an error; the last %.1f ms after the first, at %.6f\n", threads, (last - first) * 1000, last_wall);
	fflush(stdout);
	/* Wait for the restarted broker: the module must reconnect on its own. */
	for (i = 0; i < 100 && rv != CKR_OK; i++) {
		usleep(100000);
		rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &again);
	}
	if (rv != CKR_OK) { fprintf(stderr, "no reconnection: 0x%lx\n", rv); return 1; }
	if (f->C_GetSessionInfo(login, &info) == CKR_OK) { fprintf(stderr, "the old session is still valid\n"); return 1; }
	printf("reconnected after the restart; the old session is reported invalid\n");
	f->C_Finalize(NULL);
	return last - first < 1.0 ? 0 : 1;
}
