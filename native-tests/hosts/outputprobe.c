/* Large call outputs through a module, for the broker's memory tests (19-broker-memory.sh).
 *   outputprobe random MODULE SIZE RV
 *       C_GenerateRandom of SIZE bytes; exit 0 when it returns RV (hex CK_RV), and when RV is 0
 *       the buffer was filled (not left all zero)
 *   outputprobe attribute MODULE SIZE COPIES RV
 *       create a session CKO_DATA object whose CKA_VALUE holds SIZE patterned bytes, then read it
 *       with a template naming CKA_VALUE COPIES times (SIZE bytes each); exit 0 when that returns
 *       RV, and when RV is 0 every copy holds the pattern
 *   outputprobe churn MODULE ROUNDS LARGEST
 *       ROUNDS times C_GenerateRandom of LARGEST bytes down to LARGEST/8 in steps of LARGEST/8
 *       (sizes that leave a C heap fragmented when it keeps what it freed); exit 0 when every
 *       call succeeded (run beside other clients, the broker makes large outputs wait for each
 *       other rather than refuse them) */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;

static CK_SESSION_HANDLE open_session(const char *path)
{
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CK_SESSION_HANDLE session;
	void *library = dlopen(path, RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); exit(1); }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) { fprintf(stderr, "cannot initialise %s\n", path); exit(1); }
	if (f->C_GetSlotList(CK_TRUE, slots, &count) != CKR_OK || count == 0) { fprintf(stderr, "no slot with a token\n"); exit(1); }
	if (f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &session) != CKR_OK) {
		fprintf(stderr, "C_OpenSession failed\n");
		exit(1);
	}
	return session;
}

static int all_zero(const unsigned char *data, size_t length)
{
	size_t i;
	for (i = 0; i < length; i++)
		if (data[i] != 0) return 0;
	return 1;
}

static int random_once(const char *module, CK_ULONG size, CK_RV expected)
{
	CK_SESSION_HANDLE session = open_session(module);
	unsigned char *buffer = calloc(1, size ? size : 1);
	CK_RV rv = f->C_GenerateRandom(session, buffer, size);
	printf("C_GenerateRandom(%lu): 0x%lx\n", size, rv);
	if (rv != expected) { fprintf(stderr, "expected 0x%lx\n", expected); return 1; }
	if (rv == CKR_OK && size >= 64 && all_zero(buffer, size)) { fprintf(stderr, "the random buffer stayed zero\n"); return 1; }
	free(buffer);
	f->C_Finalize(NULL);
	return 0;
}

static unsigned char pattern(CK_ULONG i) { return (unsigned char)(i * 7 + 3); }

static int attribute(const char *module, CK_ULONG size, CK_ULONG copies, CK_RV expected)
{
	CK_SESSION_HANDLE session = open_session(module);
	CK_OBJECT_CLASS data_class = CKO_DATA;
	CK_BBOOL no = CK_FALSE;
	unsigned char *value = malloc(size);
	CK_ATTRIBUTE create[] = {
		{ CKA_CLASS, &data_class, sizeof data_class },
		{ CKA_TOKEN, &no, sizeof no },
		{ CKA_PRIVATE, &no, sizeof no }, /* SoftHSM makes objects private by default: no login needed */
		{ CKA_VALUE, value, size },
	};
	CK_ATTRIBUTE *readback = calloc(copies, sizeof *readback);
	CK_OBJECT_HANDLE object;
	CK_ULONG i, j;
	CK_RV rv;
	for (i = 0; i < size; i++) value[i] = pattern(i);
	rv = f->C_CreateObject(session, create, sizeof create / sizeof create[0], &object);
	if (rv != CKR_OK) { fprintf(stderr, "C_CreateObject of a %lu-byte value: 0x%lx\n", size, rv); return 1; }
	for (j = 0; j < copies; j++) {
		readback[j].type = CKA_VALUE;
		readback[j].pValue = calloc(1, size);
		readback[j].ulValueLen = size;
	}
	rv = f->C_GetAttributeValue(session, object, readback, copies);
	printf("C_GetAttributeValue(%lu x CKA_VALUE of %lu bytes): 0x%lx\n", copies, size, rv);
	if (rv != expected) { fprintf(stderr, "expected 0x%lx\n", expected); return 1; }
	for (j = 0; rv == CKR_OK && j < copies; j++) {
		if (readback[j].ulValueLen != size) { fprintf(stderr, "copy %lu: %lu bytes\n", j, readback[j].ulValueLen); return 1; }
		for (i = 0; i < size; i++)
			if (((unsigned char *)readback[j].pValue)[i] != pattern(i)) { fprintf(stderr, "copy %lu differs at %lu\n", j, i); return 1; }
	}
	f->C_Finalize(NULL);
	return 0;
}

static int churn(const char *module, int rounds, CK_ULONG largest)
{
	CK_SESSION_HANDLE session = open_session(module);
	const CK_ULONG step = largest / 8;
	unsigned char *buffer = malloc(largest);
	int round, calls = 0;
	CK_ULONG size;
	for (round = 0; round < rounds; round++) {
		for (size = largest; size >= step && size > 0; size -= step) {
			CK_RV rv = f->C_GenerateRandom(session, buffer, size);
			if (rv != CKR_OK) { fprintf(stderr, "C_GenerateRandom(%lu) in round %d: 0x%lx\n", size, round, rv); return 1; }
			calls++;
		}
	}
	printf("churn: %d calls of %lu bytes down to %lu answered\n", calls, largest, step);
	f->C_Finalize(NULL);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "random") == 0)
		return random_once(argv[2], strtoul(argv[3], NULL, 0), strtoul(argv[4], NULL, 16));
	if (argc == 6 && strcmp(argv[1], "attribute") == 0)
		return attribute(argv[2], strtoul(argv[3], NULL, 0), strtoul(argv[4], NULL, 0), strtoul(argv[5], NULL, 16));
	if (argc == 5 && strcmp(argv[1], "churn") == 0)
		return churn(argv[2], atoi(argv[3]), strtoul(argv[4], NULL, 0));
	fprintf(stderr, "usage: outputprobe random MODULE SIZE RV | attribute MODULE SIZE COPIES RV | churn MODULE ROUNDS LARGEST\n");
	return 2;
}
