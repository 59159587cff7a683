/* cardhost: a PKCS#11 client for smart-card event tests, driven one line at a time on stdin and
 * answering each command with one line on stdout, so a test runs the same sequence against a
 * module loaded directly and through the proxy and compares the transcripts line by line.
 * A blocking C_WaitForSlotEvent runs in a thread of its own, so the other commands show whether
 * calls of other threads are answered while it waits.
 *
 * usage: cardhost MODULE      (C_Initialize with CKF_OS_LOCKING_OK; answers "rv=0x0 ready")
 * Every answer starts with "rv=0xN" (the CK_RV of the call) or "rv=pending", then fields.
 *   slots                 C_GetSlotList(FALSE) and (TRUE), C_GetSlotInfo of each
 *                         -> all=ID,.. present=ID,.. then ID:DESCRIPTION:FLAGS for each slot
 *   token ID              C_GetTokenInfo -> label=.. serial=.. flags=0x..
 *   open ID               C_OpenSession (read-only) on slot ID; it becomes the current session
 *   sessioninfo           C_GetSessionInfo of the current session -> slot=N state=N
 *   login PIN             C_Login(CKU_USER) on the current session
 *   sign DATA FILE        SHA256-RSA-PKCS signature of DATA with the first private key the session
 *                         finds, written to FILE -> length=N (nokey=1 when there is none)
 *   close                 C_CloseSession of the current session
 *   drain                 C_WaitForSlotEvent(CKF_DONT_BLOCK) until it is not CKR_OK (at most 16)
 *                         -> the last CK_RV, events=ID,..
 *   wait-start            a thread starts a blocking C_WaitForSlotEvent -> rv=0x0 started
 *   open-start ID         a thread starts C_OpenSession on slot ID (the session becomes current)
 *   wait-result SECONDS   that thread's result, waiting at most SECONDS -> rv=0xN slot=N,
 *   open-result SECONDS   or rv=pending when it is still waiting (after open-start: slot=1 when
 *                         a session was opened)
 *   finalize              C_Finalize
 *   initialize            C_Initialize again
 *   quit                  exits 0 (without C_Finalize)
 * Descriptions and labels print with spaces as '_' and trailing blanks removed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SESSION_HANDLE session;

static pthread_mutex_t wait_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_done = PTHREAD_COND_INITIALIZER;
static int wait_running, wait_finished;
static CK_RV wait_rv;
static CK_SLOT_ID wait_slot;
static pthread_t wait_thread;

static void answer(const char *rv, const char *extra)
{
	printf("rv=%s%s%s\n", rv, extra[0] ? " " : "", extra);
	fflush(stdout);
}

static void answer_rv(CK_RV rv, const char *extra)
{
	char text[32];
	snprintf(text, sizeof text, "0x%lx", (unsigned long)rv);
	answer(text, extra);
}

/* A blank-padded PKCS#11 string as one word: blanks removed at the end, '_' for inner spaces. */
static void word(char *out, size_t out_size, const CK_UTF8CHAR *in, size_t in_size)
{
	size_t n = in_size, i;
	while (n > 0 && (in[n - 1] == ' ' || in[n - 1] == 0)) n--;
	if (n >= out_size) n = out_size - 1;
	for (i = 0; i < n; i++) out[i] = in[i] == ' ' ? '_' : (char)in[i];
	out[n] = 0;
}

static void append(char *out, size_t size, const char *format, ...)
{
	size_t used = strlen(out);
	va_list args;
	va_start(args, format);
	if (used < size) vsnprintf(out + used, size - used, format, args);
	va_end(args);
}

static void slots(void)
{
	CK_SLOT_ID all[32], present[32];
	CK_ULONG all_count = 32, present_count = 32, i;
	char extra[2048] = "all=";
	CK_RV rv = f->C_GetSlotList(CK_FALSE, all, &all_count);
	if (rv != CKR_OK) { answer_rv(rv, "list=all"); return; }
	rv = f->C_GetSlotList(CK_TRUE, present, &present_count);
	if (rv != CKR_OK) { answer_rv(rv, "list=present"); return; }
	for (i = 0; i < all_count; i++) append(extra, sizeof extra, i ? ",%lu" : "%lu", (unsigned long)all[i]);
	append(extra, sizeof extra, " present=");
	for (i = 0; i < present_count; i++) append(extra, sizeof extra, i ? ",%lu" : "%lu", (unsigned long)present[i]);
	for (i = 0; i < all_count; i++) {
		CK_SLOT_INFO info;
		char description[80];
		rv = f->C_GetSlotInfo(all[i], &info);
		if (rv != CKR_OK) {
			append(extra, sizeof extra, " %lu:slotinfo-rv=0x%lx", (unsigned long)all[i], (unsigned long)rv);
			continue;
		}
		word(description, sizeof description, info.slotDescription, sizeof info.slotDescription);
		append(extra, sizeof extra, " %lu:%s:0x%lx", (unsigned long)all[i], description, (unsigned long)info.flags);
	}
	answer_rv(CKR_OK, extra);
}

static void token(CK_SLOT_ID id)
{
	CK_TOKEN_INFO info;
	char label[40], serial[20], extra[256] = "";
	CK_RV rv = f->C_GetTokenInfo(id, &info);
	if (rv == CKR_OK) {
		word(label, sizeof label, info.label, sizeof info.label);
		word(serial, sizeof serial, info.serialNumber, sizeof info.serialNumber);
		snprintf(extra, sizeof extra, "label=%s serial=%s flags=0x%lx", label, serial, (unsigned long)info.flags);
	}
	answer_rv(rv, extra);
}

static void sign(const char *data, const char *file)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE template[] = { { CKA_CLASS, &cls, sizeof cls } };
	CK_OBJECT_HANDLE key;
	CK_ULONG count = 0;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	unsigned char signature[512];
	CK_ULONG length = sizeof signature;
	char extra[64];
	CK_RV rv = f->C_FindObjectsInit(session, template, 1);
	if (rv == CKR_OK) {
		rv = f->C_FindObjects(session, &key, 1, &count);
		CK_RV final = f->C_FindObjectsFinal(session);
		if (rv == CKR_OK) rv = final;
	}
	if (rv == CKR_OK && count == 0) { answer_rv(rv, "length=0 nokey=1"); return; }
	if (rv == CKR_OK) rv = f->C_SignInit(session, &mechanism, key);
	if (rv == CKR_OK) rv = f->C_Sign(session, (CK_BYTE_PTR)data, strlen(data), signature, &length);
	if (rv == CKR_OK) {
		FILE *out = fopen(file, "wb");
		if (!out || fwrite(signature, 1, length, out) != length) { perror(file); exit(1); }
		fclose(out);
	}
	snprintf(extra, sizeof extra, "length=%lu", rv == CKR_OK ? (unsigned long)length : 0ul);
	answer_rv(rv, extra);
}

static void drain(void)
{
	char extra[512] = "events=";
	CK_RV rv = CKR_OK;
	int i;
	for (i = 0; i < 16; i++) {
		CK_SLOT_ID slot = 0;
		rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL);
		if (rv != CKR_OK) break;
		append(extra, sizeof extra, i ? ",%lu" : "%lu", (unsigned long)slot);
	}
	answer_rv(rv, extra);
}

static CK_SLOT_ID open_slot;

/* The thread's call: a blocking C_WaitForSlotEvent (its slot), or C_OpenSession (its session). */
static void *waiter(void *opening)
{
	CK_SLOT_ID slot = 0;
	CK_SESSION_HANDLE opened = 0;
	CK_RV rv;
	if (opening) {
		rv = f->C_OpenSession(open_slot, CKF_SERIAL_SESSION, NULL, NULL, &opened);
		if (rv == CKR_OK) session = opened;
		slot = opened != 0;
	} else {
		rv = f->C_WaitForSlotEvent(0, &slot, NULL);
	}
	pthread_mutex_lock(&wait_lock);
	wait_rv = rv;
	wait_slot = slot;
	wait_finished = 1;
	pthread_cond_broadcast(&wait_done);
	pthread_mutex_unlock(&wait_lock);
	return NULL;
}

static void wait_start(int opening)
{
	if (wait_running) { answer("busy", ""); return; }
	wait_running = 1;
	wait_finished = 0;
	if (pthread_create(&wait_thread, NULL, waiter, opening ? &open_slot : NULL) != 0) { perror("pthread_create"); exit(1); }
	answer_rv(CKR_OK, "started");
}

static void wait_result(int seconds)
{
	struct timespec deadline;
	char extra[64];
	int finished;
	if (!wait_running) { answer("none", ""); return; }
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += seconds;
	pthread_mutex_lock(&wait_lock);
	while (!wait_finished)
		if (pthread_cond_timedwait(&wait_done, &wait_lock, &deadline) == ETIMEDOUT) break;
	finished = wait_finished;
	pthread_mutex_unlock(&wait_lock);
	if (!finished) { answer("pending", ""); return; }
	pthread_join(wait_thread, NULL);
	wait_running = 0;
	snprintf(extra, sizeof extra, "slot=%lu", (unsigned long)wait_slot);
	answer_rv(wait_rv, extra);
}

static void command(char *line)
{
	char extra[128];
	char *verb = strtok(line, " \t\n");
	char *a1 = strtok(NULL, " \t\n");
	char *a2 = strtok(NULL, " \t\n");
	CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_RV rv;

	if (!verb) return;
	if (!strcmp(verb, "slots")) {
		slots();
	} else if (!strcmp(verb, "token") && a1) {
		token(strtoul(a1, NULL, 10));
	} else if (!strcmp(verb, "open") && a1) {
		CK_SESSION_HANDLE opened = 0;
		rv = f->C_OpenSession(strtoul(a1, NULL, 10), CKF_SERIAL_SESSION, NULL, NULL, &opened);
		if (rv == CKR_OK) session = opened;
		answer_rv(rv, "");
	} else if (!strcmp(verb, "sessioninfo")) {
		CK_SESSION_INFO info;
		rv = f->C_GetSessionInfo(session, &info);
		snprintf(extra, sizeof extra, rv == CKR_OK ? "slot=%lu state=%lu" : "", (unsigned long)info.slotID,
			 (unsigned long)info.state);
		answer_rv(rv, extra);
	} else if (!strcmp(verb, "login") && a1) {
		answer_rv(f->C_Login(session, CKU_USER, (CK_UTF8CHAR_PTR)a1, strlen(a1)), "");
	} else if (!strcmp(verb, "sign") && a1 && a2) {
		sign(a1, a2);
	} else if (!strcmp(verb, "close")) {
		answer_rv(f->C_CloseSession(session), "");
	} else if (!strcmp(verb, "drain")) {
		drain();
	} else if (!strcmp(verb, "wait-start")) {
		wait_start(0);
	} else if (!strcmp(verb, "open-start") && a1) {
		open_slot = strtoul(a1, NULL, 10);
		wait_start(1);
	} else if (!strcmp(verb, "wait-result") || !strcmp(verb, "open-result")) {
		wait_result(a1 ? atoi(a1) : 30);
	} else if (!strcmp(verb, "finalize")) {
		answer_rv(f->C_Finalize(NULL), "");
	} else if (!strcmp(verb, "initialize")) {
		answer_rv(f->C_Initialize(&args), "");
	} else if (!strcmp(verb, "quit")) {
		exit(0);
	} else {
		answer("unknown-command", "");
	}
}

int main(int argc, char **argv)
{
	void *library;
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
	CK_RV rv;
	char line[1024];

	if (argc != 2) {
		fprintf(stderr, "usage: cardhost MODULE\n");
		return 2;
	}
	library = dlopen(argv[1], RTLD_NOW);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get || get(&f) != CKR_OK) { fprintf(stderr, "C_GetFunctionList failed\n"); return 1; }
	if ((rv = f->C_Initialize(&args)) != CKR_OK) { fprintf(stderr, "C_Initialize: 0x%lx\n", rv); return 1; }
	answer_rv(CKR_OK, "ready");
	while (fgets(line, sizeof line, stdin))
		command(line);
	return 0;
}
