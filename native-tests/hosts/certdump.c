/* Lists every certificate of every token a module offers, as "label|sha256(CKA_VALUE)" lines,
 * loading and unloading the module twice (dlclose must be harmless, then a second load works).
 * usage: certdump MODULE */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/sha.h>
#include <p11-kit/pkcs11.h>

static int dump(const char *path, int print)
{
	void *library = dlopen(path, RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slots[64];
	CK_ULONG nslots = 64, i, count = 0;
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) { fprintf(stderr, "init failed\n"); return 1; }
	if (f->C_GetSlotList(CK_TRUE, slots, &nslots) != CKR_OK) return 1;
	for (i = 0; i < nslots; i++) {
		CK_SESSION_HANDLE session;
		CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
		CK_ATTRIBUTE find[] = { { CKA_CLASS, &cls, sizeof cls } };
		CK_OBJECT_HANDLE objects[64];
		CK_ULONG found;
		if (f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK) continue;
		f->C_FindObjectsInit(session, find, 1);
		while (f->C_FindObjects(session, objects, 64, &found) == CKR_OK && found > 0) {
			CK_ULONG j;
			for (j = 0; j < found; j++) {
				CK_ATTRIBUTE sizes[] = { { CKA_LABEL, NULL, 0 }, { CKA_VALUE, NULL, 0 } };
				unsigned char digest[SHA256_DIGEST_LENGTH];
				int k;
				if (f->C_GetAttributeValue(session, objects[j], sizes, 2) != CKR_OK) { fprintf(stderr, "size query failed\n"); return 1; }
				sizes[0].pValue = calloc(1, sizes[0].ulValueLen + 1);
				sizes[1].pValue = malloc(sizes[1].ulValueLen);
				if (f->C_GetAttributeValue(session, objects[j], sizes, 2) != CKR_OK) { fprintf(stderr, "value query failed\n"); return 1; }
				SHA256(sizes[1].pValue, sizes[1].ulValueLen, digest);
				if (print) {
					printf("%s|", (char *)sizes[0].pValue);
					for (k = 0; k < SHA256_DIGEST_LENGTH; k++) printf("%02x", digest[k]);
					printf("\n");
				}
				count++;
				free(sizes[0].pValue);
				free(sizes[1].pValue);
			}
		}
		f->C_FindObjectsFinal(session);
		f->C_CloseSession(session);
	}
	f->C_Finalize(NULL);
	dlclose(library);
	fprintf(stderr, "%lu certificates\n", count);
	return count > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc != 2) { fprintf(stderr, "usage: certdump MODULE\n"); return 2; }
	/* First pass loads and unloads; the second must work the same after dlclose. */
	return dump(argv[1], 0) || dump(argv[1], 1);
}
