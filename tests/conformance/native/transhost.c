/* A host process for the transparency harness (tests/conformance/Transparency): calls that may
 * crash a process, or that need a process to go away, run here rather than in the test runner.
 *
 *   transhost init-garbage MODULE KIND   C_Initialize with pReserved pointing at garbage of one kind:
 *                                        low         the address 1 (no mapping there)
 *                                        guard       the first byte of an inaccessible page
 *                                        unterminated 64 KiB of 'A' without a NUL, then an inaccessible page
 *                                        binary      readable bytes 01 fe 80 07 then a NUL
 *                                        Prints "C_Initialize=0x<rv>" (and finalises on success).
 *   transhost leave MODULE PIN SECONDS   Initialises, logs in on the first slot with a token, starts a
 *                                        thread blocked in C_WaitForSlotEvent(0), prints "waiting",
 *                                        and after SECONDS leaves with _exit(0): no C_Finalize.
 *
 * Build: cc -O2 -Wall -o transhost transhost.c -I/usr/include/p11-kit-1 -ldl -lpthread */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR load(const char *module)
{
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST_PTR functions = NULL;
	void *library = dlopen(module, RTLD_NOW);
	if (library == NULL) {
		fprintf(stderr, "dlopen %s: %s\n", module, dlerror());
		exit(2);
	}
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (get == NULL || get(&functions) != CKR_OK) {
		fprintf(stderr, "C_GetFunctionList failed\n");
		exit(2);
	}
	return functions;
}

/* Two pages, the second inaccessible; returns the start of the inaccessible one. */
static char *guarded(size_t readable)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t pages = (readable + page - 1) / page;
	char *map = mmap(NULL, (pages + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED || mprotect(map + pages * page, page, PROT_NONE) != 0) {
		perror("mmap");
		exit(2);
	}
	return map + pages * page;
}

static int init_garbage(const char *module, const char *kind)
{
	CK_FUNCTION_LIST_PTR f = load(module);
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;
	void *reserved;

	if (strcmp(kind, "low") == 0) {
		reserved = (void *)1;
	} else if (strcmp(kind, "guard") == 0) {
		reserved = guarded(1);
	} else if (strcmp(kind, "unterminated") == 0) {
		char *end = guarded(65536);
		memset(end - 65536, 'A', 65536);
		reserved = end - 65536;
	} else if (strcmp(kind, "binary") == 0) {
		static char bytes[] = { 0x01, (char)0xfe, (char)0x80, 0x07, 0 };
		reserved = bytes;
	} else {
		fprintf(stderr, "unknown garbage kind %s\n", kind);
		return 2;
	}
	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	args.pReserved = reserved;
	rv = f->C_Initialize(&args);
	printf("C_Initialize=0x%lx\n", rv);
	fflush(stdout);
	if (rv == CKR_OK)
		f->C_Finalize(NULL);
	return 0;
}

static CK_FUNCTION_LIST_PTR waiting_module;

static void *wait_for_event(void *unused)
{
	CK_SLOT_ID slot;
	(void)unused;
	waiting_module->C_WaitForSlotEvent(0, &slot, NULL);
	return NULL;
}

static int leave(const char *module, const char *pin, const char *seconds)
{
	CK_FUNCTION_LIST_PTR f = load(module);
	CK_C_INITIALIZE_ARGS args;
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CK_SESSION_HANDLE session;
	pthread_t waiter;
	CK_RV rv;

	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	if ((rv = f->C_Initialize(&args)) != CKR_OK ||
	    (rv = f->C_GetSlotList(CK_TRUE, slots, &count)) != CKR_OK || count == 0 ||
	    (rv = f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &session)) != CKR_OK ||
	    (rv = f->C_Login(session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin))) != CKR_OK) {
		printf("set-up failed: 0x%lx\n", rv);
		return 1;
	}
	waiting_module = f;
	pthread_create(&waiter, NULL, wait_for_event, NULL);
	printf("waiting\n");
	fflush(stdout);
	usleep((useconds_t)(atof(seconds) * 1e6));
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "init-garbage") == 0)
		return init_garbage(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "leave") == 0)
		return leave(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: transhost init-garbage MODULE KIND | leave MODULE PIN SECONDS\n");
	return 2;
}
