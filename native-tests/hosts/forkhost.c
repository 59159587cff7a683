/* Fork test host: loads a PKCS#11 module, keeps threads calling into it, and forks while they
 * run. Each child checks that the inherited module reports CKR_CRYPTOKI_NOT_INITIALIZED, calls
 * C_Initialize itself, generates random data and signs, then finalizes; every other child exits
 * without touching the module. The parent keeps working throughout.
 * usage: forkhost MODULE PIN CHILDREN THREADS */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static volatile int stop;
static volatile long parent_calls, parent_errors;

#define CHECK(call, what) do { CK_RV rv_ = (call); if (rv_ != CKR_OK) { \
	fprintf(stderr, "%s: %s failed: 0x%lx\n", who, what, rv_); return 1; } } while (0)

static int first_slot(const char *who)
{
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CHECK(f->C_GetSlotList(CK_TRUE, slots, &count), "C_GetSlotList");
	if (count == 0) { fprintf(stderr, "%s: no token\n", who); return 1; }
	slot = slots[0]; /* SoftHSM lists the initialised token first */
	return 0;
}

static int sign_once(const char *who, const char *pin)
{
	CK_SESSION_HANDLE session;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE find[] = { { CKA_CLASS, &cls, sizeof cls } };
	CK_OBJECT_HANDLE key;
	CK_ULONG found = 0, length = 0;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	unsigned char random[32], signature[512];

	CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session), "C_OpenSession");
	CHECK(f->C_GenerateRandom(session, random, sizeof random), "C_GenerateRandom");
	{
		/* Login state belongs to the application: other open sessions keep it logged in. */
		CK_RV rv = f->C_Login(session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
		if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
			fprintf(stderr, "%s: C_Login failed: 0x%lx\n", who, rv);
			return 1;
		}
	}
	CHECK(f->C_FindObjectsInit(session, find, 1), "C_FindObjectsInit");
	CHECK(f->C_FindObjects(session, &key, 1, &found), "C_FindObjects");
	CHECK(f->C_FindObjectsFinal(session), "C_FindObjectsFinal");
	if (found != 1) { fprintf(stderr, "%s: no private key\n", who); return 1; }
	CHECK(f->C_SignInit(session, &mechanism, key), "C_SignInit");
	length = sizeof signature;
	CHECK(f->C_Sign(session, random, sizeof random, signature, &length), "C_Sign");
	CHECK(f->C_CloseSession(session), "C_CloseSession");
	return length == 256 ? 0 : 1;
}

static void *worker(void *unused)
{
	CK_SESSION_HANDLE session;
	unsigned char random[32];
	(void)unused;
	if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK) {
		__sync_fetch_and_add(&parent_errors, 1);
		return NULL;
	}
	while (!stop) {
		if (f->C_GenerateRandom(session, random, sizeof random) != CKR_OK)
			__sync_fetch_and_add(&parent_errors, 1);
		__sync_fetch_and_add(&parent_calls, 1);
	}
	f->C_CloseSession(session);
	return NULL;
}

static int child(int index, const char *pin)
{
	const char *who = "child";
	CK_ULONG count = 0;
	if (index % 2 == 1)
		return 0; /* a child that never uses the module */
	if (f->C_GetSlotList(CK_TRUE, NULL, &count) != CKR_CRYPTOKI_NOT_INITIALIZED) {
		fprintf(stderr, "child: inherited module did not report CKR_CRYPTOKI_NOT_INITIALIZED\n");
		return 1;
	}
	CHECK(f->C_Initialize(NULL), "C_Initialize in child");
	if (first_slot(who) || sign_once(who, pin))
		return 1;
	CHECK(f->C_Finalize(NULL), "C_Finalize in child");
	return 0;
}

int main(int argc, char **argv)
{
	const char *who = "parent";
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	void *library;
	int children, threads, i, failed = 0;
	pthread_t tids[64];

	if (argc != 5) { fprintf(stderr, "usage: forkhost MODULE PIN CHILDREN THREADS\n"); return 2; }
	children = atoi(argv[3]);
	threads = atoi(argv[4]);
	if (threads > 64) threads = 64;
	library = dlopen(argv[1], RTLD_NOW);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	CHECK(get(&f), "C_GetFunctionList");
	CHECK(f->C_Initialize(NULL), "C_Initialize");
	if (first_slot(who))
		return 1;
	for (i = 0; i < threads; i++)
		pthread_create(&tids[i], NULL, worker, NULL);
	for (i = 0; i < children; i++) {
		int status;
		pid_t pid = fork();
		if (pid == 0)
			_exit(child(i, argv[2]));
		if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "parent: child %d failed (status 0x%x)\n", i, pid < 0 ? -1 : status);
			failed++;
		}
		if (sign_once(who, argv[2]))
			failed++;
	}
	stop = 1;
	for (i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	CHECK(f->C_Finalize(NULL), "C_Finalize");
	printf("children: %d, failed: %d; parent calls during forks: %ld, errors: %ld\n",
	       children, failed, parent_calls, parent_errors);
	return failed || parent_errors ? 1 : 0;
}
