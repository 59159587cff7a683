/* Replies out of order on one connection: one thread signs with RSA-2048 (slow) while another
 * asks for random data (quick). When the server runs requests of a connection concurrently, some
 * random calls start and finish while a signature is in flight, so their replies overtake the
 * signature's; the client must still give every reply to the thread that asked. Each signature
 * is verified, each random reply must have the asked length.
 * usage: overtake MODULE PIN SIGNATURES
 * Prints "signatures: N, random calls: N, overtaking: N, failures: N"; exits 1 on any failure,
 * and 3 when no random call overtook a signature (the server answered strictly in order). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>
#include "hostsetup.h"

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static int signatures;
static long failures, random_calls, overtaking;
/* Odd while a signature is in flight; incremented before and after each C_Sign. */
static volatile long sign_sequence;
static volatile int signing_done;

static void failure(const char *what, CK_RV rv)
{
	fprintf(stderr, "%s (0x%lx)\n", what, rv);
	__sync_fetch_and_add(&failures, 1);
}

static int find_one(CK_SESSION_HANDLE session, CK_OBJECT_CLASS class, CK_OBJECT_HANDLE *object)
{
	CK_ATTRIBUTE template[] = { { CKA_CLASS, &class, sizeof class } };
	CK_ULONG found = 0;
	if (f->C_FindObjectsInit(session, template, 1) != CKR_OK) return 0;
	if (f->C_FindObjects(session, object, 1, &found) != CKR_OK) found = 0;
	f->C_FindObjectsFinal(session);
	return found == 1;
}

static void *signer(void *unused)
{
	CK_SESSION_HANDLE session;
	CK_OBJECT_HANDLE private_key, public_key;
	CK_MECHANISM mechanism = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_RV rv;
	int i;
	(void)unused;
	if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session)) != CKR_OK) {
		failure("signer: C_OpenSession", rv);
		signing_done = 1;
		return NULL;
	}
	if (!find_one(session, CKO_PRIVATE_KEY, &private_key) || !find_one(session, CKO_PUBLIC_KEY, &public_key)) {
		failure("signer: the RSA key pair was not found", 0);
		signing_done = 1;
		return NULL;
	}
	for (i = 0; i < signatures; i++) {
		unsigned char data[64], signature[512];
		CK_ULONG length = sizeof signature;
		snprintf((char *)data, sizeof data, "signature %d", i);
		if ((rv = f->C_SignInit(session, &mechanism, private_key)) != CKR_OK) { failure("C_SignInit", rv); continue; }
		__sync_fetch_and_add(&sign_sequence, 1);
		rv = f->C_Sign(session, data, strlen((char *)data), signature, &length);
		__sync_fetch_and_add(&sign_sequence, 1);
		if (rv != CKR_OK) { failure("C_Sign", rv); continue; }
		if ((rv = f->C_VerifyInit(session, &mechanism, public_key)) != CKR_OK ||
		    (rv = f->C_Verify(session, data, strlen((char *)data), signature, length)) != CKR_OK)
			failure("a signature does not verify", rv);
	}
	f->C_CloseSession(session);
	signing_done = 1;
	return NULL;
}

static void *asker(void *unused)
{
	CK_SESSION_HANDLE session;
	CK_RV rv;
	unsigned long n = 0;
	(void)unused;
	if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session)) != CKR_OK) {
		failure("asker: C_OpenSession", rv);
		return NULL;
	}
	while (!signing_done) {
		unsigned char random[64];
		CK_ULONG asked = 1 + n++ % sizeof random;
		long before = sign_sequence, after;
		memset(random, 0, sizeof random);
		if ((rv = f->C_GenerateRandom(session, random, asked)) != CKR_OK) { failure("C_GenerateRandom", rv); break; }
		after = sign_sequence;
		__sync_fetch_and_add(&random_calls, 1);
		/* Began and ended within one C_Sign: its reply overtook the signature's. */
		if (before == after && (before & 1))
			__sync_fetch_and_add(&overtaking, 1);
	}
	f->C_CloseSession(session);
	return NULL;
}

int main(int argc, char **argv)
{
	CK_SESSION_HANDLE login;
	pthread_t signing, asking;

	if (argc != 4) { fprintf(stderr, "usage: overtake MODULE PIN SIGNATURES\n"); return 2; }
	signatures = atoi(argv[3]);
	if (host_setup(argv[1], argv[2], &f, &slot, &login) != 0) return 1;
	pthread_create(&signing, NULL, signer, NULL);
	pthread_create(&asking, NULL, asker, NULL);
	pthread_join(signing, NULL);
	pthread_join(asking, NULL);
	f->C_CloseSession(login);
	f->C_Finalize(NULL);
	printf("signatures: %d, random calls: %ld, overtaking: %ld, failures: %ld\n", signatures, random_calls, overtaking, failures);
	if (failures) return 1;
	return overtaking > 0 ? 0 : 3;
}
