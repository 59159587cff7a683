/* Many host threads calling one module at once: each thread signs with its own data and checks
 * the signature against the key, finds objects, reads attributes and asks for random data. A
 * reply handed to the wrong thread shows up as a wrong signature, count or value.
 * usage: threadhost MODULE PIN THREADS ROUNDS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>
#include "hostsetup.h"

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static const char *pin;
static int rounds;
static long failures, calls;

static void failure(int thread, const char *what, CK_RV rv)
{
	fprintf(stderr, "thread %d: %s (0x%lx)\n", thread, what, rv);
	__sync_fetch_and_add(&failures, 1);
}

static void *worker(void *argument)
{
	int id = (int)(long)argument, i;
	CK_SESSION_HANDLE session;
	CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY, public_class = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE find_private[] = { { CKA_CLASS, &private_class, sizeof private_class } };
	CK_ATTRIBUTE find_public[] = { { CKA_CLASS, &public_class, sizeof public_class } };
	CK_OBJECT_HANDLE private_key, public_key;
	CK_ULONG found;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_RV rv;

	if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session)) != CKR_OK) {
		failure(id, "C_OpenSession", rv);
		return NULL;
	}
	for (i = 0; i < rounds; i++) {
		unsigned char data[64], signature[512], label[64], random[48];
		CK_ULONG length = sizeof signature;
		CK_ATTRIBUTE attributes[] = { { CKA_LABEL, label, sizeof label } };
		snprintf((char *)data, sizeof data, "thread %d round %d", id, i);
		if (f->C_FindObjectsInit(session, find_private, 1) != CKR_OK ||
		    f->C_FindObjects(session, &private_key, 1, &found) != CKR_OK || found != 1 ||
		    f->C_FindObjectsFinal(session) != CKR_OK) { failure(id, "find private key", 0); continue; }
		if (f->C_FindObjectsInit(session, find_public, 1) != CKR_OK ||
		    f->C_FindObjects(session, &public_key, 1, &found) != CKR_OK || found != 1 ||
		    f->C_FindObjectsFinal(session) != CKR_OK) { failure(id, "find public key", 0); continue; }
		if ((rv = f->C_SignInit(session, &mechanism, private_key)) != CKR_OK ||
		    (rv = f->C_Sign(session, data, strlen((char *)data), signature, &length)) != CKR_OK) { failure(id, "sign", rv); continue; }
		if ((rv = f->C_VerifyInit(session, &mechanism, public_key)) != CKR_OK ||
		    (rv = f->C_Verify(session, data, strlen((char *)data), signature, length)) != CKR_OK) { failure(id, "signature does not verify", rv); continue; }
		if ((rv = f->C_GetAttributeValue(session, private_key, attributes, 1)) != CKR_OK ||
		    attributes[0].ulValueLen != 8 || memcmp(label, "demo-key", 8) != 0) { failure(id, "label", rv); continue; }
		if ((rv = f->C_GenerateRandom(session, random, 1 + (id + i) % sizeof random)) != CKR_OK) { failure(id, "random", rv); continue; }
		__sync_fetch_and_add(&calls, 13);
	}
	f->C_CloseSession(session);
	return NULL;
}

int main(int argc, char **argv)
{
	CK_SESSION_HANDLE login;
	int threads, i;
	pthread_t tids[256];
	pthread_attr_t small_stack;

	if (argc != 5) { fprintf(stderr, "usage: threadhost MODULE PIN THREADS ROUNDS\n"); return 2; }
	pin = argv[2];
	threads = atoi(argv[3]);
	rounds = atoi(argv[4]);
	if (threads > 256) threads = 256;
	if (host_setup(argv[1], pin, &f, &slot, &login) != 0) return 1;
	/* Foreign threads with small stacks, as musl and some hosts create them. */
	pthread_attr_init(&small_stack);
	pthread_attr_setstacksize(&small_stack, 64 * 1024);
	for (i = 0; i < threads; i++)
		pthread_create(&tids[i], &small_stack, worker, (void *)(long)i);
	for (i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	f->C_CloseSession(login);
	f->C_Finalize(NULL);
	printf("threads: %d, rounds: %d, calls: %ld, failures: %ld\n", threads, rounds, calls, failures);
	return failures ? 1 : 0;
}
