/* reconnecthost MODULE PIN DIR LABEL [once]: a long-lived PKCS#11 host for native-tests/44-ssh-remote.sh.
 * Prints the labels of every token it sees, signs DIR/data on the token labelled LABEL with the RSA key labelled rsa-key
 * (CKM_SHA256_RSA_PKCS) into DIR/sig1 and prints "signed 1". Unless "once" is given it then waits
 * for a line on stdin (the test kills the connection to the broker meanwhile), shows what the old
 * session's next call returns, and does it all again from C_GetSlotList (which must reconnect):
 * a new session, login, a signature into DIR/sig2, "signed 2". Exit status 0 only if both
 * signatures were made. */
#include <stdlib.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR p11;

static int sign_into(CK_SESSION_HANDLE session, const char *dir, const char *name)
{
	CK_OBJECT_CLASS class = CKO_PRIVATE_KEY;
	char label[] = "rsa-key";
	CK_ATTRIBUTE template[] = {
		{ CKA_CLASS, &class, sizeof class },
		{ CKA_LABEL, label, sizeof label - 1 },
	};
	CK_OBJECT_HANDLE key;
	CK_ULONG found = 0;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	unsigned char data[4096], signature[512];
	CK_ULONG signature_length = sizeof signature;
	char path[4096];
	size_t length;
	FILE *file;
	CK_RV rv;

	snprintf(path, sizeof path, "%s/data", dir);
	if (!(file = fopen(path, "rb"))) { perror(path); return 1; }
	length = fread(data, 1, sizeof data, file);
	fclose(file);
	if ((rv = p11->C_FindObjectsInit(session, template, 2)) != CKR_OK ||
	    (rv = p11->C_FindObjects(session, &key, 1, &found)) != CKR_OK ||
	    (rv = p11->C_FindObjectsFinal(session)) != CKR_OK || found != 1) {
		fprintf(stderr, "finding rsa-key: 0x%lx, %lu found\n", rv, found);
		return 1;
	}
	if ((rv = p11->C_SignInit(session, &mechanism, key)) != CKR_OK ||
	    (rv = p11->C_Sign(session, data, length, signature, &signature_length)) != CKR_OK) {
		fprintf(stderr, "signing: 0x%lx\n", rv);
		return 1;
	}
	snprintf(path, sizeof path, "%s/%s", dir, name);
	if (!(file = fopen(path, "wb")) || fwrite(signature, 1, signature_length, file) != signature_length) {
		perror(path);
		return 1;
	}
	fclose(file);
	return 0;
}

/* Prints every token's label; returns 0 and sets *found to the slot whose token is LABEL. */
static int find_token(const char *label, CK_SLOT_ID *found)
{
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16, i;
	CK_TOKEN_INFO info;
	CK_RV rv;
	int matched = 0;

	if ((rv = p11->C_GetSlotList(CK_TRUE, slots, &count)) != CKR_OK) {
		fprintf(stderr, "C_GetSlotList: 0x%lx\n", rv);
		return 1;
	}
	printf("tokens:");
	for (i = 0; i < count; i++) {
		int length = sizeof info.label;
		if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
		while (length > 0 && info.label[length - 1] == ' ') length--;
		printf(" '%.*s'", length, info.label);
		if (!matched && (size_t)length == strlen(label) && memcmp(info.label, label, length) == 0) {
			*found = slots[i];
			matched = 1;
		}
	}
	printf("\n");
	if (!matched) fprintf(stderr, "no token labelled %s\n", label);
	return matched ? 0 : 1;
}

static int open_and_login(CK_SLOT_ID slot, const char *pin, CK_SESSION_HANDLE *session)
{
	CK_RV rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, session);
	if (rv != CKR_OK) { fprintf(stderr, "C_OpenSession: 0x%lx\n", rv); return 1; }
	rv = p11->C_Login(*session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) { fprintf(stderr, "C_Login: 0x%lx\n", rv); return 1; }
	return 0;
}

int main(int argc, char **argv)
{
	CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE session;
	char line[64];
	void *library;
	CK_RV rv;

	if (argc < 5) { fprintf(stderr, "usage: reconnecthost MODULE PIN DIR LABEL [once]\n"); return 2; }
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!(library = dlopen(argv[1], RTLD_NOW))) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(&p11) != CKR_OK) { fprintf(stderr, "C_GetFunctionList failed\n"); return 1; }
	if ((rv = p11->C_Initialize(&args)) != CKR_OK) { fprintf(stderr, "C_Initialize: 0x%lx\n", rv); return 1; }
	if (find_token(argv[4], &slot) != 0 || open_and_login(slot, argv[2], &session) != 0) return 1;
	if (sign_into(session, argv[3], "sig1") != 0) return 1;
	printf("signed 1\n");
	if (argc > 5 && strcmp(argv[5], "once") == 0) return p11->C_Finalize(NULL) == CKR_OK ? 0 : 1;

	if (!fgets(line, sizeof line, stdin)) { fprintf(stderr, "no go-ahead on stdin\n"); return 1; }
	rv = p11->C_GenerateRandom(session, (CK_BYTE_PTR)line, 16);
	printf("old session after the connection died: 0x%lx\n", rv);
	if (rv == CKR_OK) { fprintf(stderr, "the old session still works: the connection was not cut\n"); return 1; }

	/* The slot query reconnects; then a new session and login, as after a token removal. */
	if (find_token(argv[4], &slot) != 0 || open_and_login(slot, argv[2], &session) != 0) return 1;
	if (sign_into(session, argv[3], "sig2") != 0) return 1;
	printf("signed 2\n");
	return p11->C_Finalize(NULL) == CKR_OK ? 0 : 1;
}
