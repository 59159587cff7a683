/* isoclient: a PKCS#11 client that takes commands one line at a time on stdin and answers each
 * with one line on stdout, so a test script can interleave two or more clients of one server
 * (client A does this, then client B tries that) and assert every CK_RV.
 *
 * usage: isoclient MODULE          (initialises MODULE with CKF_OS_LOCKING_OK, uses the first slot
 *                                   with a token; answers "ready rv=0x0" or exits 1)
 * Every answer starts with "rv=0xN" (the CK_RV of the last call made) and may add fields.
 * Commands (HANDLE: an object handle as printed by an earlier answer, of this or another client):
 *   open ro|rw              C_OpenSession; it becomes the current session    -> session=N
 *   close                   C_CloseSession of the current session
 *   login user|so|context PIN|-  C_Login on the current session ("-": a NULL PIN)
 *   tokeninfo               C_GetTokenInfo      -> flags=0xN protected=0|1 sessions=N
 *   state                   C_GetSessionInfo of the current session            -> state=N
 *   closeall                C_CloseAllSessions on the slot
 *   login-finalize MS       a thread calls C_Login(CKU_USER, NULL); MS ms later this one calls
 *                           C_Finalize             -> (the login's rv) finalize=0xN ms=N (until both returned)
 *   signctx DATA PIN|- [FILE]  SignInit with the key of id 02 (CKA_ALWAYS_AUTHENTICATE), C_Login
 *                           (CKU_CONTEXT_SPECIFIC, "-": a NULL PIN), Sign  -> step=LAST-CALL length=N
 *   logout                  C_Logout
 *   initpin PIN             C_InitPIN (sets the user PIN; the SO must be logged in)
 *   count private|data      objects of that class the session can find      -> count=N
 *   create-data LABEL TEXT  a session data object (not token, not private)   -> handle=N
 *   genkey                  a session HMAC key (32-byte generic secret, not
 *                           private: usable without a login)                -> handle=N
 *   read HANDLE             CKA_VALUE of an object                           -> value=TEXT (or length=N)
 *   destroy HANDLE          C_DestroyObject
 *   hmac HANDLE             SHA256-HMAC SignInit + Sign with a key handle
 *   sign DATA [FILE]        SHA256-RSA-PKCS signature of DATA with the token's RSA private key
 *                           (id 01), written to FILE                         -> length=N
 *   slotid                  the slot in use                                  -> slot=N
 *   wait [dontblock]        C_WaitForSlotEvent                               -> slot=N
 *   finalize                C_Finalize
 *   quit                    exits 0 (without C_Finalize: as a killed client would)
 */
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
static CK_SESSION_HANDLE session;

static void answer(CK_RV rv, const char *extra)
{
	printf("rv=0x%lx%s%s\n", (unsigned long)rv, extra[0] ? " " : "", extra);
	fflush(stdout);
}

static CK_RV find(CK_OBJECT_CLASS cls, const unsigned char *id, CK_ULONG id_length, CK_OBJECT_HANDLE *found, CK_ULONG max,
		  CK_ULONG *count)
{
	CK_ATTRIBUTE template[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_ID, (void *)id, id_length } };
	CK_RV rv = f->C_FindObjectsInit(session, template, id ? 2 : 1);
	if (rv != CKR_OK) return rv;
	rv = f->C_FindObjects(session, found, max, count);
	f->C_FindObjectsFinal(session);
	return rv;
}

static CK_RV null_login_rv;
static void *null_login(void *unused)
{
	(void)unused;
	null_login_rv = f->C_Login(session, CKU_USER, NULL, 0);
	return NULL;
}

static void command(char *line)
{
	char extra[512] = "";
	char *verb = strtok(line, " \t\n");
	char *a1 = strtok(NULL, " \t\n");
	char *a2 = strtok(NULL, " \t\n");
	CK_RV rv;

	if (!verb) return;
	if (!strcmp(verb, "open")) {
		CK_FLAGS flags = CKF_SERIAL_SESSION | (a1 && !strcmp(a1, "rw") ? CKF_RW_SESSION : 0);
		CK_SESSION_HANDLE opened = 0;
		rv = f->C_OpenSession(slot, flags, NULL, NULL, &opened);
		if (rv == CKR_OK) session = opened;
		snprintf(extra, sizeof extra, "session=%lu", (unsigned long)opened);
		answer(rv, extra);
	} else if (!strcmp(verb, "close")) {
		answer(f->C_CloseSession(session), "");
	} else if (!strcmp(verb, "login") && a1 && a2) {
		/* "-": a NULL PIN, as on a protected authentication path */
		int null_pin = !strcmp(a2, "-");
		CK_USER_TYPE type = !strcmp(a1, "so") ? CKU_SO : !strcmp(a1, "context") ? CKU_CONTEXT_SPECIFIC : CKU_USER;
		answer(f->C_Login(session, type, null_pin ? NULL : (CK_UTF8CHAR_PTR)a2, null_pin ? 0 : strlen(a2)), "");
	} else if (!strcmp(verb, "tokeninfo")) {
		CK_TOKEN_INFO info;
		rv = f->C_GetTokenInfo(slot, &info);
		snprintf(extra, sizeof extra, "flags=0x%lx protected=%d sessions=%ld", rv == CKR_OK ? (unsigned long)info.flags : 0ul,
			 rv == CKR_OK && (info.flags & CKF_PROTECTED_AUTHENTICATION_PATH) ? 1 : 0, rv == CKR_OK ? (long)info.ulSessionCount : -1l);
		answer(rv, extra);
	} else if (!strcmp(verb, "state")) {
		CK_SESSION_INFO info;
		rv = f->C_GetSessionInfo(session, &info);
		snprintf(extra, sizeof extra, "state=%lu", rv == CKR_OK ? (unsigned long)info.state : 99ul);
		answer(rv, extra);
	} else if (!strcmp(verb, "signctx") && a1 && a2) {
		/* key id 02 has CKA_ALWAYS_AUTHENTICATE: each signature needs its own context-specific login */
		static const unsigned char id[] = { 2 };
		char *a3 = strtok(NULL, " \t\n");
		CK_OBJECT_HANDLE key;
		CK_ULONG count = 0;
		CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
		unsigned char signature[512];
		CK_ULONG length = sizeof signature;
		const char *step = "find";
		int null_pin = !strcmp(a2, "-");
		rv = find(CKO_PRIVATE_KEY, id, 1, &key, 1, &count);
		if (rv == CKR_OK && count == 0) rv = CKR_KEY_HANDLE_INVALID;
		if (rv == CKR_OK) { step = "signinit"; rv = f->C_SignInit(session, &mechanism, key); }
		if (rv == CKR_OK) {
			step = "login";
			rv = f->C_Login(session, CKU_CONTEXT_SPECIFIC, null_pin ? NULL : (CK_UTF8CHAR_PTR)a2, null_pin ? 0 : strlen(a2));
		}
		if (rv == CKR_OK) { step = "sign"; rv = f->C_Sign(session, (CK_BYTE_PTR)a1, strlen(a1), signature, &length); }
		if (rv == CKR_OK && a3) {
			FILE *out = fopen(a3, "wb");
			if (out) {
				fwrite(signature, 1, length, out);
				fclose(out);
			}
		}
		snprintf(extra, sizeof extra, "step=%s length=%lu", step, rv == CKR_OK ? (unsigned long)length : 0ul);
		answer(rv, extra);
	} else if (!strcmp(verb, "login-finalize") && a1) {
		/* another thread's C_Login(CKU_USER, NULL) is under way when this one calls C_Finalize */
		pthread_t thread;
		struct timespec start, end;
		CK_RV finalized;
		clock_gettime(CLOCK_MONOTONIC, &start);
		pthread_create(&thread, NULL, null_login, NULL);
		usleep(atoi(a1) * 1000);
		finalized = f->C_Finalize(NULL);
		pthread_join(thread, NULL);
		clock_gettime(CLOCK_MONOTONIC, &end);
		snprintf(extra, sizeof extra, "finalize=0x%lx ms=%ld", (unsigned long)finalized,
			 (long)((end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1000000));
		answer(null_login_rv, extra);
	} else if (!strcmp(verb, "closeall")) {
		answer(f->C_CloseAllSessions(slot), "");
	} else if (!strcmp(verb, "logout")) {
		answer(f->C_Logout(session), "");
	} else if (!strcmp(verb, "initpin") && a1) {
		answer(f->C_InitPIN(session, (CK_UTF8CHAR_PTR)a1, strlen(a1)), "");
	} else if (!strcmp(verb, "count") && a1) {
		CK_OBJECT_HANDLE found[64];
		CK_ULONG count = 0;
		rv = find(!strcmp(a1, "private") ? CKO_PRIVATE_KEY : CKO_DATA, NULL, 0, found, 64, &count);
		snprintf(extra, sizeof extra, "count=%lu", (unsigned long)count);
		answer(rv, extra);
	} else if (!strcmp(verb, "create-data") && a1 && a2) {
		CK_OBJECT_CLASS cls = CKO_DATA;
		CK_BBOOL no = CK_FALSE;
		CK_ATTRIBUTE template[] = {
			{ CKA_CLASS, &cls, sizeof cls }, { CKA_TOKEN, &no, sizeof no }, { CKA_PRIVATE, &no, sizeof no },
			{ CKA_LABEL, a1, strlen(a1) }, { CKA_VALUE, a2, strlen(a2) },
		};
		CK_OBJECT_HANDLE handle = 0;
		rv = f->C_CreateObject(session, template, 5, &handle);
		snprintf(extra, sizeof extra, "handle=%lu", (unsigned long)handle);
		answer(rv, extra);
	} else if (!strcmp(verb, "genkey")) {
		CK_MECHANISM mechanism = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
		CK_ULONG length = 32;
		CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
		CK_KEY_TYPE type = CKK_GENERIC_SECRET;
		CK_ATTRIBUTE template[] = {
			{ CKA_VALUE_LEN, &length, sizeof length }, { CKA_TOKEN, &no, sizeof no }, { CKA_SIGN, &yes, sizeof yes },
			{ CKA_KEY_TYPE, &type, sizeof type }, { CKA_PRIVATE, &no, sizeof no },
		};
		CK_OBJECT_HANDLE handle = 0;
		rv = f->C_GenerateKey(session, &mechanism, template, 5, &handle);
		snprintf(extra, sizeof extra, "handle=%lu", (unsigned long)handle);
		answer(rv, extra);
	} else if (!strcmp(verb, "read") && a1) {
		char value[256];
		CK_ATTRIBUTE template[] = { { CKA_VALUE, value, sizeof value - 1 } };
		rv = f->C_GetAttributeValue(session, strtoul(a1, NULL, 10), template, 1);
		if (rv == CKR_OK) {
			value[template[0].ulValueLen] = 0;
			snprintf(extra, sizeof extra, "value=%s", value);
		}
		answer(rv, extra);
	} else if (!strcmp(verb, "destroy") && a1) {
		answer(f->C_DestroyObject(session, strtoul(a1, NULL, 10)), "");
	} else if (!strcmp(verb, "hmac") && a1) {
		CK_MECHANISM mechanism = { CKM_SHA256_HMAC, NULL, 0 };
		unsigned char mac[64];
		CK_ULONG length = sizeof mac;
		rv = f->C_SignInit(session, &mechanism, strtoul(a1, NULL, 10));
		if (rv == CKR_OK) rv = f->C_Sign(session, (CK_BYTE_PTR) "data", 4, mac, &length);
		answer(rv, "");
	} else if (!strcmp(verb, "sign") && a1) {
		static const unsigned char id[] = { 1 };
		CK_OBJECT_HANDLE key;
		CK_ULONG count = 0;
		CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
		unsigned char signature[512];
		CK_ULONG length = sizeof signature;
		rv = find(CKO_PRIVATE_KEY, id, 1, &key, 1, &count);
		if (rv == CKR_OK && count == 0) {
			answer(rv, "length=0 nokey=1");
			return;
		}
		if (rv == CKR_OK) rv = f->C_SignInit(session, &mechanism, key);
		if (rv == CKR_OK) rv = f->C_Sign(session, (CK_BYTE_PTR)a1, strlen(a1), signature, &length);
		if (rv == CKR_OK && a2) {
			FILE *out = fopen(a2, "wb");
			if (out) {
				fwrite(signature, 1, length, out);
				fclose(out);
			}
		}
		snprintf(extra, sizeof extra, "length=%lu", rv == CKR_OK ? (unsigned long)length : 0ul);
		answer(rv, extra);
	} else if (!strcmp(verb, "slotid")) {
		snprintf(extra, sizeof extra, "slot=%lu", (unsigned long)slot);
		answer(CKR_OK, extra);
	} else if (!strcmp(verb, "wait")) {
		CK_SLOT_ID event = 0;
		rv = f->C_WaitForSlotEvent(a1 && !strcmp(a1, "dontblock") ? CKF_DONT_BLOCK : 0, &event, NULL);
		snprintf(extra, sizeof extra, "slot=%lu", (unsigned long)event);
		answer(rv, extra);
	} else if (!strcmp(verb, "finalize")) {
		answer(f->C_Finalize(NULL), "");
	} else if (!strcmp(verb, "quit")) {
		exit(0);
	} else {
		printf("error unknown-command\n");
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	void *library;
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CK_RV rv;
	char line[1024];

	if (argc != 2) {
		fprintf(stderr, "usage: isoclient MODULE\n");
		return 2;
	}
	library = dlopen(argv[1], RTLD_NOW);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(&f) != CKR_OK) { fprintf(stderr, "C_GetFunctionList failed\n"); return 1; }
	if ((rv = f->C_Initialize(&args)) != CKR_OK) { fprintf(stderr, "C_Initialize: 0x%lx\n", rv); return 1; }
	if ((rv = f->C_GetSlotList(CK_TRUE, slots, &count)) != CKR_OK || count == 0) {
		fprintf(stderr, "C_GetSlotList: 0x%lx, %lu slots\n", rv, count);
		return 1;
	}
	slot = slots[0];
	answer(CKR_OK, "ready");
	while (fgets(line, sizeof line, stdin))
		command(line);
	return 0;
}
