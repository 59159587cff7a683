/* The module against native-tests/hosts/lyingpeer.py, for 20-module-memcheck.sh: every buffer
 * the module writes into is a heap block of exactly the size declared to it, so under valgrind's
 * memcheck a write past one is reported. Each call must fail (the peer's replies do not fit), and
 * none may write where it should not.
 *   overflowprobe MODULE           exit 0 when every call failed as it should
 *   overflowprobe MODULE control   against "lyingpeer.py SOCKET control": a 10-byte signature
 *                                  into an 8-byte block declared as 16, a write past the block
 *                                  that memcheck must report (proof that it sees the module's writes) */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static int failures;

static void expect_failure(const char *what, CK_RV rv)
{
	printf("%s: 0x%lx\n", what, rv);
	if (rv == CKR_OK) { fprintf(stderr, "%s: succeeded on a reply that does not fit\n", what); failures++; }
}

/* Exactly SIZE bytes, filled with a marker so a partial write shows too. */
static unsigned char *block(size_t size)
{
	unsigned char *p = malloc(size);
	memset(p, 0xA5, size);
	return p;
}

int main(int argc, char **argv)
{
	CK_FUNCTION_LIST_PTR f;
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	void *library;
	CK_ULONG count, length;
	CK_SLOT_ID *slots;
	CK_INFO *info;
	CK_SESSION_HANDLE session;
	CK_MECHANISM mechanism = { CKM_RSA_PKCS, NULL, 0 };
	unsigned char data[32] = { 0 }, *signature, *random, *label, *id;
	CK_ATTRIBUTE *template;

	if (argc < 2 || (argc == 3 && strcmp(argv[2], "control") != 0) || argc > 3) {
		fprintf(stderr, "usage: overflowprobe MODULE [control]\n");
		return 2;
	}
	library = dlopen(argv[1], RTLD_NOW);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) { fprintf(stderr, "cannot initialise\n"); return 2; }

	if (argc == 3) {
		if (f->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK ||
		    f->C_SignInit(session, &mechanism, 2) != CKR_OK) return 1;
		signature = block(8);
		length = 16;
		printf("C_Sign(16) into an 8-byte block: 0x%lx\n", f->C_Sign(session, data, sizeof data, signature, &length));
		free(signature);
		f->C_Finalize(NULL);
		return 0;
	}

	/* 1000 slots for 2; 1000 announced with 2 given; 3 announced, the third cut. */
	slots = (CK_SLOT_ID *)block(2 * sizeof *slots);
	count = 2;
	expect_failure("C_GetSlotList(2) answered with 1000", f->C_GetSlotList(CK_TRUE, slots, &count));
	count = 2;
	expect_failure("C_GetSlotList(2) answered with 1000 announced, 2 given", f->C_GetSlotList(CK_TRUE, slots, &count));
	free(slots);
	slots = (CK_SLOT_ID *)block(3 * sizeof *slots);
	count = 3;
	expect_failure("C_GetSlotList(3) answered with a cut third slot", f->C_GetSlotList(CK_TRUE, slots, &count));
	free(slots);

	info = (CK_INFO *)block(sizeof *info);
	expect_failure("C_GetInfo answered with a 40-byte manufacturerID", f->C_GetInfo(info));
	free(info);

	if (f->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK ||
	    f->C_SignInit(session, &mechanism, 2) != CKR_OK) {
		fprintf(stderr, "the peer's C_OpenSession and C_SignInit answers were refused\n");
		return 1;
	}
	signature = block(16);
	length = 16;
	expect_failure("C_Sign(16) answered with 300 bytes", f->C_Sign(session, data, sizeof data, signature, &length));
	free(signature);

	random = block(32);
	expect_failure("C_GenerateRandom(32) answered with 33 bytes", f->C_GenerateRandom(session, random, 32));
	free(random);

	label = block(4);
	template = (CK_ATTRIBUTE *)block(sizeof *template);
	template[0].type = CKA_LABEL;
	template[0].pValue = label;
	template[0].ulValueLen = 4;
	expect_failure("CKA_LABEL(4) answered with 100 bytes", f->C_GetAttributeValue(session, 1, template, 1));
	template[0].ulValueLen = 4;
	expect_failure("CKA_LABEL(4) answered with 4 announced, 100 given", f->C_GetAttributeValue(session, 1, template, 1));
	free(template);

	id = block(16);
	free(label);
	label = block(16);
	template = (CK_ATTRIBUTE *)block(2 * sizeof *template);
	template[0].type = CKA_LABEL;
	template[0].pValue = label;
	template[0].ulValueLen = 16;
	template[1].type = CKA_ID;
	template[1].pValue = id;
	template[1].ulValueLen = 16;
	expect_failure("2 attributes answered with 3", f->C_GetAttributeValue(session, 1, template, 2));
	free(template);
	free(label);
	free(id);

	if (f->C_Finalize(NULL) != CKR_OK) { fprintf(stderr, "C_Finalize failed\n"); failures++; }
	return failures ? 1 : 0;
}
