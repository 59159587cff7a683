/* Probes for the broker's isolation and robustness tests.
 *   brokerprobe hold MODULE         open a session, print its handle, wait for a line on stdin,
 *                                   then check the session still works (exit 0 if it does)
 *   brokerprobe steal MODULE HANDLE try to use and close another client's session; exit 0 when
 *                                   both are refused with CKR_SESSION_HANDLE_INVALID
 *   brokerprobe garbage SOCKET      speak the handshake, then send a malformed frame; exit 0 when
 *                                   the broker closes this connection */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR load(const char *path)
{
	CK_FUNCTION_LIST_PTR f;
	void *library = dlopen(path, RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	if (!library) { fprintf(stderr, "dlopen: %s\n", dlerror()); exit(1); }
	get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK) { fprintf(stderr, "cannot initialise %s\n", path); exit(1); }
	return f;
}

static int hold(const char *module)
{
	CK_FUNCTION_LIST_PTR f = load(module);
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	CK_SESSION_HANDLE session;
	CK_SESSION_INFO info;
	char line[16];
	if (f->C_GetSlotList(CK_TRUE, slots, &count) != CKR_OK || count == 0) return 1;
	if (f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK) return 1;
	printf("%lu\n", session);
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin)) return 1;
	if (f->C_GetSessionInfo(session, &info) != CKR_OK) { fprintf(stderr, "hold: my session is gone\n"); return 1; }
	f->C_Finalize(NULL);
	return 0;
}

static int steal(const char *module, const char *handle)
{
	CK_FUNCTION_LIST_PTR f = load(module);
	CK_SESSION_HANDLE session = strtoul(handle, NULL, 10);
	CK_SESSION_INFO info;
	CK_RV info_rv = f->C_GetSessionInfo(session, &info);
	CK_RV close_rv = f->C_CloseSession(session);
	CK_SLOT_ID slots[16];
	CK_ULONG count = 16;
	printf("C_GetSessionInfo: 0x%lx, C_CloseSession: 0x%lx\n", info_rv, close_rv);
	if (f->C_GetSlotList(CK_TRUE, slots, &count) == CKR_OK && count > 0)
		f->C_CloseAllSessions(slots[0]); /* must close only this client's (none) */
	f->C_Finalize(NULL);
	return info_rv == CKR_SESSION_HANDLE_INVALID && close_rv == CKR_SESSION_HANDLE_INVALID ? 0 : 1;
}

static int garbage(const char *path)
{
	struct sockaddr_un address = { .sun_family = AF_UNIX };
	unsigned char version = 0, frame[64], reply[16];
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	strncpy(address.sun_path, path, sizeof address.sun_path - 1);
	if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("connect"); return 1; }
	if (write(fd, &version, 1) != 1 || read(fd, &version, 1) != 1) return 1;
	/* call code 0x10, no options, 40-byte body claiming call id 0x7fffffff */
	memset(frame, 0xa5, sizeof frame);
	frame[0] = 0; frame[1] = 0; frame[2] = 0; frame[3] = 0x10;
	memset(frame + 4, 0, 4);
	frame[8] = 0; frame[9] = 0; frame[10] = 0; frame[11] = 40;
	frame[12] = 0x7f; frame[13] = 0xff; frame[14] = 0xff; frame[15] = 0xff;
	if (write(fd, frame, 52) != 52) return 1;
	/* The broker must hang up on us rather than answer or hang. */
	return read(fd, reply, sizeof reply) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "hold") == 0) return hold(argv[2]);
	if (argc >= 4 && strcmp(argv[1], "steal") == 0) return steal(argv[2], argv[3]);
	if (argc >= 3 && strcmp(argv[1], "garbage") == 0) return garbage(argv[2]);
	fprintf(stderr, "usage: brokerprobe hold MODULE | steal MODULE HANDLE | garbage SOCKET\n");
	return 2;
}
