/* p11bench: a PKCS#11 benchmark host. It dlopens any PKCS#11 module, initializes it with
 * CKF_OS_LOCKING_OK and times one workload, call by call, with clock_gettime(CLOCK_MONOTONIC).
 *
 * usage:
 *   p11bench [options] WORKLOAD MODULE     WORKLOAD: random32 info getattr find sign-ec sign-rsa
 *                                                     digest-1m mix
 *   p11bench [--label L] cold MODULE       one life cycle: dlopen, C_Initialize, C_GetSlotList,
 *                                           C_OpenSession, C_CloseSession, C_Finalize, dlclose
 *   p11bench [--label L] [--runs N] cold-spawn MODULE
 *                                           runs "p11bench cold MODULE" N times, each a fresh
 *                                           process, and reports the medians (wall time measured
 *                                           from posix_spawn to waitpid, so exec is included)
 *   p11bench --clients N [--server-pid PID] [options] WORKLOAD MODULE
 *                                           many clients: N processes of their own (each one
 *                                           thread, its own connection), set up one after the
 *                                           other, started together once all are connected,
 *                                           logged in and warmed up; reports
 *                                           their aggregate ops/s and the percentiles over all
 *                                           their samples. With --server-pid, also the server's
 *                                           memory per idle client: RSS and PSS of PID and its
 *                                           descendants with the N clients connected and idle,
 *                                           minus the same before they connected, over N
 * options:
 *   --threads N    worker threads, each with its own session (default 1; mix always uses 2)
 *   --seconds S    measure for S seconds (default 1)
 *   --ops N        measure exactly N operations in all (split evenly over the threads)
 *   --warmup N     unmeasured operations per thread before measuring (default 20)
 *   --pin PIN      user PIN (default 1234); the host logs in once, on its first session
 *   --token LABEL  use the token with this label (default: the first initialized token)
 *   --label L      configuration name echoed in the output
 *
 * Output: one line per measurement,
 *   RESULT config=L workload=W threads=T ops=N seconds=S ops_per_s=X p50_us=Y p99_us=Z host_cpu_us=C rss_kb=R
 * (mix adds rsa_ops_per_s; cold adds the phases; --clients adds clients= and the server memory
 * fields server_rss_kb_before/_idle, rss_per_client_kb, pss_per_client_kb). host_cpu_us is the CPU time (user + system, all
 * threads) this process used from the start of measuring until its threads were joined. One operation is the whole sequence a workload
 * names: getattr = two C_GetAttributeValue calls, find = Init + FindObjects + Final, sign =
 * SignInit + Sign, digest = DigestInit + Digest. Latency samples are kept in a reservoir of
 * RESERVOIR per thread (uniform, so percentiles stay unbiased) that is allocated and touched before
 * measuring, so the peak RSS of the host differs between modules only by what the modules use. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

/* The environment is read with dlsym rather than declared "extern char **environ": a declaration
 * gives this executable a copy relocation of environ, after which libc's own storage (what a
 * module that looks "environ" up in libc.so.6 sees) is left empty. */
static char **current_environment(void)
{
	char ***p = (char ***)dlsym(RTLD_DEFAULT, "environ");
	return p ? *p : NULL;
}

#define RESERVOIR (1u << 18)   /* samples kept per thread: 1 MiB of uint32 nanoseconds */
#define MEMBER_RESERVOIR (1u << 15) /* per client process of --clients: 64 of them share 2^21 */
static uint32_t reservoir = RESERVOIR;
#define MAX_THREADS 64
#define DIGEST_SIZE (1u << 20)

enum workload { W_RANDOM32, W_INFO, W_GETATTR, W_FIND, W_SIGN_EC, W_SIGN_RSA, W_DIGEST_1M, W_MIX };
static const char *const workload_names[] = {
	"random32", "info", "getattr", "find", "sign-ec", "sign-rsa", "digest-1m", "mix",
};

static CK_FUNCTION_LIST_PTR p11;
static CK_SLOT_ID slot;
static const char *label = "-";
static const char *pin = "1234";
static const char *token_label;
static int threads = 1;
static double seconds = 1.0;
static uint64_t start_cpu_us;
static long total_ops;          /* > 0: --ops mode */
static long warmup = 20;
static CK_OBJECT_HANDLE rsa_key, ec_key, certificate;
static unsigned char *digest_input;

static pthread_barrier_t start_barrier;
static int member_ready_fd = -1, member_go_fd = -1; /* a client of --clients: its pipes to the parent */
static const char *member_output;                   /* ... and where it writes its samples */
static uint64_t start_ns;       /* set by thread 0 right after the barrier */
static volatile int started;
static volatile int measured_done;  /* mix: the measured thread has finished */

struct worker {
	pthread_t tid;
	int index;
	enum workload workload;
	int measured;               /* this thread's samples count in the result */
	long ops_target;            /* --ops mode: this thread's share */
	CK_SESSION_HANDLE session;
	uint32_t *samples;
	uint64_t kept, ops;
	uint64_t end_ns;
	uint64_t rng;
	CK_RV error;
	const char *error_what;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_us(void)
{
	struct rusage usage;
	getrusage(RUSAGE_SELF, &usage);
	return (uint64_t)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000u +
	       (uint64_t)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

static long rss_kb(void)
{
	struct rusage usage;
	getrusage(RUSAGE_SELF, &usage);
	return usage.ru_maxrss;
}

static void die(const char *what, CK_RV rv)
{
	printf("ERROR config=%s what=%s rv=0x%lx\n", label, what, (unsigned long)rv);
	fprintf(stderr, "p11bench: %s failed: CK_RV 0x%lx\n", what, (unsigned long)rv);
	fflush(stdout);
	exit(1);
}

static void *load_module(const char *path)
{
	void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CK_RV (*get_function_list)(CK_FUNCTION_LIST_PTR_PTR);
	if (!library) {
		fprintf(stderr, "p11bench: dlopen %s: %s\n", path, dlerror());
		printf("ERROR config=%s what=dlopen\n", label);
		exit(1);
	}
	get_function_list = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(library, "C_GetFunctionList");
	if (!get_function_list) {
		fprintf(stderr, "p11bench: %s has no C_GetFunctionList\n", path);
		exit(1);
	}
	CK_RV rv = get_function_list(&p11);
	if (rv != CKR_OK) die("C_GetFunctionList", rv);
	return library;
}

static void initialize(void)
{
	CK_C_INITIALIZE_ARGS args;
	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	CK_RV rv = p11->C_Initialize(&args);
	if (rv != CKR_OK) die("C_Initialize", rv);
}

/* The first slot whose token carries token_label (or, without one, is initialized). */
static void choose_slot(void)
{
	CK_SLOT_ID slots[64];
	CK_ULONG count = 64, i;
	CK_RV rv = p11->C_GetSlotList(CK_TRUE, slots, &count);
	if (rv != CKR_OK) die("C_GetSlotList", rv);
	for (i = 0; i < count; i++) {
		CK_TOKEN_INFO info;
		if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
		if (token_label) {
			size_t n = strlen(token_label);
			if (n > sizeof info.label) continue;
			if (memcmp(info.label, token_label, n) != 0) continue;
			size_t j;
			int padded = 1;
			for (j = n; j < sizeof info.label; j++) if (info.label[j] != ' ') padded = 0;
			if (!padded) continue;
		} else if (!(info.flags & CKF_TOKEN_INITIALIZED)) {
			continue;
		}
		slot = slots[i];
		return;
	}
	fprintf(stderr, "p11bench: no token %s among %lu slots\n", token_label ? token_label : "(initialized)",
		(unsigned long)count);
	printf("ERROR config=%s what=no-token\n", label);
	exit(1);
}

static CK_SESSION_HANDLE open_session(void)
{
	CK_SESSION_HANDLE session;
	CK_RV rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session);
	if (rv != CKR_OK) die("C_OpenSession", rv);
	return session;
}

/* The first object matching class (and key type, when key_type != -1). */
static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE session, CK_OBJECT_CLASS cls, long key_type, const char *what)
{
	CK_KEY_TYPE type = (CK_KEY_TYPE)key_type;
	CK_ATTRIBUTE template[] = {
		{ CKA_CLASS, &cls, sizeof cls },
		{ CKA_KEY_TYPE, &type, sizeof type },
	};
	CK_OBJECT_HANDLE object;
	CK_ULONG found = 0;
	CK_RV rv = p11->C_FindObjectsInit(session, template, key_type < 0 ? 1 : 2);
	if (rv != CKR_OK) die("C_FindObjectsInit", rv);
	rv = p11->C_FindObjects(session, &object, 1, &found);
	if (rv != CKR_OK) die("C_FindObjects", rv);
	rv = p11->C_FindObjectsFinal(session);
	if (rv != CKR_OK) die("C_FindObjectsFinal", rv);
	if (found != 1) die(what, CKR_GENERAL_ERROR);
	return object;
}

/* One operation of the workload; returns CKR_OK or the failing call's value. */
static CK_RV run_op(struct worker *w, enum workload workload, const char **what)
{
	CK_RV rv;
	switch (workload) {
	case W_RANDOM32: {
		unsigned char buffer[32];
		*what = "C_GenerateRandom";
		return p11->C_GenerateRandom(w->session, buffer, sizeof buffer);
	}
	case W_INFO: {
		CK_TOKEN_INFO info;
		*what = "C_GetTokenInfo";
		return p11->C_GetTokenInfo(slot, &info);
	}
	case W_GETATTR: {
		unsigned char label_buffer[256], id_buffer[256], value_buffer[8192];
		CK_ATTRIBUTE template[] = {
			{ CKA_LABEL, NULL, 0 },
			{ CKA_ID, NULL, 0 },
			{ CKA_VALUE, NULL, 0 },
		};
		*what = "C_GetAttributeValue (sizes)";
		rv = p11->C_GetAttributeValue(w->session, certificate, template, 3);
		if (rv != CKR_OK) return rv;
		if (template[0].ulValueLen > sizeof label_buffer || template[1].ulValueLen > sizeof id_buffer ||
		    template[2].ulValueLen > sizeof value_buffer) {
			*what = "certificate attributes too large";
			return CKR_GENERAL_ERROR;
		}
		template[0].pValue = label_buffer;
		template[1].pValue = id_buffer;
		template[2].pValue = value_buffer;
		*what = "C_GetAttributeValue (values)";
		return p11->C_GetAttributeValue(w->session, certificate, template, 3);
	}
	case W_FIND: {
		CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
		CK_ATTRIBUTE template[] = { { CKA_CLASS, &cls, sizeof cls } };
		CK_OBJECT_HANDLE objects[16];
		CK_ULONG found = 0;
		*what = "C_FindObjectsInit";
		if ((rv = p11->C_FindObjectsInit(w->session, template, 1)) != CKR_OK) return rv;
		*what = "C_FindObjects";
		if ((rv = p11->C_FindObjects(w->session, objects, 16, &found)) != CKR_OK) return rv;
		*what = "C_FindObjectsFinal";
		if ((rv = p11->C_FindObjectsFinal(w->session)) != CKR_OK) return rv;
		if (found < 2) {
			*what = "find: fewer than 2 private keys";
			return CKR_GENERAL_ERROR;
		}
		return CKR_OK;
	}
	case W_SIGN_EC:
	case W_SIGN_RSA: {
		unsigned char data[32], signature[512];
		CK_ULONG length = sizeof signature;
		CK_MECHANISM mechanism = { workload == W_SIGN_EC ? CKM_ECDSA : CKM_SHA256_RSA_PKCS, NULL, 0 };
		memset(data, 0x5a, sizeof data);
		data[0] = (unsigned char)w->ops;
		*what = "C_SignInit";
		if ((rv = p11->C_SignInit(w->session, &mechanism, workload == W_SIGN_EC ? ec_key : rsa_key)) != CKR_OK)
			return rv;
		*what = "C_Sign";
		return p11->C_Sign(w->session, data, sizeof data, signature, &length);
	}
	case W_DIGEST_1M: {
		unsigned char digest[32];
		CK_ULONG length = sizeof digest;
		CK_MECHANISM mechanism = { CKM_SHA256, NULL, 0 };
		*what = "C_DigestInit";
		if ((rv = p11->C_DigestInit(w->session, &mechanism)) != CKR_OK) return rv;
		*what = "C_Digest";
		return p11->C_Digest(w->session, digest_input, DIGEST_SIZE, digest, &length);
	}
	case W_MIX:
		break;
	}
	*what = "unknown workload";
	return CKR_GENERAL_ERROR;
}

static uint64_t next_random(struct worker *w)
{
	/* xorshift64* */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 0x2545F4914F6CDD1Dull;
}

static void keep_sample(struct worker *w, uint64_t ns)
{
	uint32_t value = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
	if (w->kept < reservoir) {
		w->samples[w->kept++] = value;
	} else {
		/* Algorithm R: the n-th sample replaces a random slot with probability reservoir/n */
		uint64_t slot_index = next_random(w) % (w->ops + 1);
		if (slot_index < reservoir) w->samples[slot_index] = value;
	}
}

static void *worker_main(void *argument)
{
	struct worker *w = argument;
	const char *what = "";
	CK_RV rv;
	long i;

	w->session = open_session();
	for (i = 0; i < warmup; i++) {
		if ((rv = run_op(w, w->workload, &what)) != CKR_OK) {
			w->error = rv;
			w->error_what = what;
			break;
		}
	}
	if (member_ready_fd >= 0 && w->index == 0) {
		/* A client of --clients: connected, logged in and warmed up. Tell the parent, then wait
		 * for the start (the parent closes the pipe: every client starts at once). */
		char status = w->error == CKR_OK ? 'R' : 'E', byte;
		if (write(member_ready_fd, &status, 1) != 1) exit(1);
		close(member_ready_fd);
		while (read(member_go_fd, &byte, 1) > 0) ;
	}
	pthread_barrier_wait(&start_barrier);
	if (w->index == 0) {
		start_cpu_us = cpu_us();
		start_ns = now_ns();
		__atomic_store_n(&started, 1, __ATOMIC_RELEASE);
	} else {
		while (!__atomic_load_n(&started, __ATOMIC_ACQUIRE)) ;
	}
	uint64_t deadline = start_ns + (uint64_t)(seconds * 1e9);
	uint64_t t0 = now_ns(), t1;
	if (w->error == CKR_OK) for (;;) {
		if (w->ops_target > 0 ? (long)w->ops >= w->ops_target : (w->measured && t0 >= deadline)) break;
		if ((rv = run_op(w, w->workload, &what)) != CKR_OK) {
			w->error = rv;
			w->error_what = what;
			break;
		}
		t1 = now_ns();
		if (w->measured) keep_sample(w, t1 - t0);
		w->ops++;
		t0 = t1;
		/* the unmeasured partner of mix stops when the measured thread does */
		if (!w->measured && (t0 >= deadline || __atomic_load_n(&measured_done, __ATOMIC_ACQUIRE))) break;
	}
	w->end_ns = t0;
	if (w->measured) __atomic_store_n(&measured_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int compare_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static double percentile_us(const uint32_t *sorted, uint64_t n, double p)
{
	if (n == 0) return 0;
	/* nearest rank */
	uint64_t rank = (uint64_t)(p * (double)n + 0.999999);
	if (rank < 1) rank = 1;
	if (rank > n) rank = n;
	return sorted[rank - 1] / 1000.0;
}

static int run_workload(enum workload workload, const char *module_path)
{
	struct worker workers[MAX_THREADS];
	int count = workload == W_MIX ? 2 : threads, i;
	CK_SESSION_HANDLE login_session;
	CK_RV rv;

	load_module(module_path);
	initialize();
	choose_slot();
	login_session = open_session();
	rv = p11->C_Login(login_session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) die("C_Login", rv);
	rsa_key = find_one(login_session, CKO_PRIVATE_KEY, CKK_RSA, "find RSA private key");
	ec_key = find_one(login_session, CKO_PRIVATE_KEY, CKK_EC, "find EC private key");
	certificate = find_one(login_session, CKO_CERTIFICATE, -1, "find certificate");
	if (workload == W_DIGEST_1M) {
		digest_input = malloc(DIGEST_SIZE);
		for (i = 0; i < (int)DIGEST_SIZE; i++) digest_input[i] = (unsigned char)(i * 31 + 7);
	}

	memset(workers, 0, sizeof workers);
	pthread_barrier_init(&start_barrier, NULL, (unsigned)count);
	for (i = 0; i < count; i++) {
		struct worker *w = &workers[i];
		w->index = i;
		w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
		if (workload == W_MIX) {
			/* thread 0 (measured) asks for random data, thread 1 signs with RSA */
			w->workload = i == 0 ? W_RANDOM32 : W_SIGN_RSA;
			w->measured = i == 0;
			w->ops_target = i == 0 ? total_ops : 0;
		} else {
			w->workload = workload;
			w->measured = 1;
			w->ops_target = total_ops > 0 ? total_ops / count + (i < total_ops % count) : 0;
		}
		if (w->measured) {
			w->samples = malloc(reservoir * sizeof *w->samples);
			memset(w->samples, 0, reservoir * sizeof *w->samples);
		}
	}
	for (i = 0; i < count; i++)
		if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) != 0) die("pthread_create", 0);
	for (i = 0; i < count; i++) pthread_join(workers[i].tid, NULL);
	uint64_t host_cpu = cpu_us() - start_cpu_us;

	uint64_t end = 0, ops = 0, kept = 0, rsa_ops = 0;
	for (i = 0; i < count; i++) {
		struct worker *w = &workers[i];
		if (w->error != CKR_OK) {
			char what[160];
			snprintf(what, sizeof what, "%s/%s", workload_names[w->workload], w->error_what);
			for (char *c = what; *c; c++) if (*c == ' ') *c = '_';
			die(what, w->error);
		}
		if (w->measured) {
			ops += w->ops;
			kept += w->kept;
			if (w->end_ns > end) end = w->end_ns;
		} else {
			rsa_ops += w->ops;
		}
	}
	uint32_t *all = malloc((kept ? kept : 1) * sizeof *all);
	uint64_t k = 0;
	for (i = 0; i < count; i++)
		if (workers[i].measured) {
			memcpy(all + k, workers[i].samples, workers[i].kept * sizeof *all);
			k += workers[i].kept;
		}
	qsort(all, kept, sizeof *all, compare_u32);
	double elapsed = (double)(end - start_ns) / 1e9;
	if (elapsed <= 0) elapsed = 1e-9;

	for (i = 0; i < count; i++) p11->C_CloseSession(workers[i].session);
	p11->C_CloseSession(login_session);
	p11->C_Finalize(NULL);

	if (member_output) {
		/* For the parent: ops, elapsed time and the kept samples (raw uint32 nanoseconds). */
		FILE *out = fopen(member_output, "wb");
		if (!out) die("fopen member output", 0);
		fprintf(out, "%llu %.9f %llu %llu\n", (unsigned long long)ops, elapsed, (unsigned long long)kept,
			(unsigned long long)host_cpu);
		fwrite(all, sizeof *all, kept, out);
		fclose(out);
		return 0;
	}
	printf("RESULT config=%s workload=%s threads=%d ops=%llu seconds=%.3f ops_per_s=%.1f p50_us=%.2f p99_us=%.2f",
	       label, workload_names[workload], count, (unsigned long long)ops, elapsed, (double)ops / elapsed,
	       percentile_us(all, kept, 0.50), percentile_us(all, kept, 0.99));
	if (workload == W_MIX) printf(" rsa_ops_per_s=%.1f", (double)rsa_ops / elapsed);
	printf(" host_cpu_us=%llu rss_kb=%ld\n", (unsigned long long)host_cpu, rss_kb());
	fflush(stdout);
	return 0;
}

/* One life cycle in this (fresh) process; prints the phases in microseconds. */
static int run_cold(const char *module_path)
{
	CK_SLOT_ID slots[64];
	CK_ULONG count = 64;
	CK_SESSION_HANDLE session;
	CK_RV rv;
	uint64_t t[8];

	t[0] = now_ns();
	void *library = load_module(module_path);
	t[1] = now_ns();
	initialize();
	t[2] = now_ns();
	if ((rv = p11->C_GetSlotList(CK_TRUE, slots, &count)) != CKR_OK) die("C_GetSlotList", rv);
	if (count == 0) die("C_GetSlotList: no slots", CKR_GENERAL_ERROR);
	slot = slots[0];
	t[3] = now_ns();
	session = open_session();
	t[4] = now_ns();
	if ((rv = p11->C_CloseSession(session)) != CKR_OK) die("C_CloseSession", rv);
	t[5] = now_ns();
	if ((rv = p11->C_Finalize(NULL)) != CKR_OK) die("C_Finalize", rv);
	t[6] = now_ns();
	dlclose(library);
	t[7] = now_ns();
	printf("COLD config=%s total_us=%.1f dlopen_us=%.1f init_us=%.1f slots_us=%.1f open_us=%.1f close_us=%.1f "
	       "finalize_us=%.1f dlclose_us=%.1f rss_kb=%ld\n",
	       label, (t[7] - t[0]) / 1e3, (t[1] - t[0]) / 1e3, (t[2] - t[1]) / 1e3, (t[3] - t[2]) / 1e3,
	       (t[4] - t[3]) / 1e3, (t[5] - t[4]) / 1e3, (t[6] - t[5]) / 1e3, (t[7] - t[6]) / 1e3, rss_kb());
	fflush(stdout);
	return 0;
}

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *values, int n)
{
	qsort(values, (size_t)n, sizeof *values, compare_double);
	return n == 0 ? 0 : n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

static double field(const char *line, const char *name)
{
	char key[64];
	snprintf(key, sizeof key, " %s=", name);
	const char *p = strstr(line, key);
	return p ? strtod(p + strlen(key), NULL) : -1;
}

/* Runs "SELF cold MODULE" `runs` times as fresh processes; reports medians. */
static int run_cold_spawn(const char *self, const char *module_path, int runs)
{
	double wall[256], inproc[256], init[256], rss[256];
	int n = 0, r;
	if (runs > 256) runs = 256;
	for (r = 0; r < runs; r++) {
		int fds[2];
		if (pipe(fds) != 0) die("pipe", 0);
		posix_spawn_file_actions_t actions;
		posix_spawn_file_actions_init(&actions);
		posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
		posix_spawn_file_actions_addclose(&actions, fds[0]);
		posix_spawn_file_actions_addclose(&actions, fds[1]);
		char *argv[8];
		int a = 0;
		argv[a++] = (char *)self;
		argv[a++] = "--label";
		argv[a++] = (char *)label;
		if (token_label) {
			argv[a++] = "--token";
			argv[a++] = (char *)token_label;
		}
		argv[a++] = "cold";
		argv[a++] = (char *)module_path;
		argv[a] = NULL;
		pid_t pid;
		uint64_t t0 = now_ns();
		if (posix_spawn(&pid, self, &actions, NULL, argv, current_environment()) != 0) die("posix_spawn", 0);
		close(fds[1]);
		char output[4096];
		size_t used = 0;
		ssize_t got;
		while ((got = read(fds[0], output + used, sizeof output - 1 - used)) > 0) used += (size_t)got;
		output[used] = 0;
		close(fds[0]);
		int status;
		waitpid(pid, &status, 0);
		uint64_t t1 = now_ns();
		posix_spawn_file_actions_destroy(&actions);
		const char *line = strstr(output, "COLD ");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !line) {
			fputs(output, stdout);
			printf("ERROR config=%s what=cold-run-%d status=%d\n", label, r, status);
			fflush(stdout);
			return 1;
		}
		fputs(line, stdout);
		wall[n] = (t1 - t0) / 1e3;
		inproc[n] = field(line, "total_us");
		init[n] = field(line, "init_us");
		rss[n] = field(line, "rss_kb");
		n++;
	}
	double wall_median = median(wall, n);
	printf("RESULT config=%s workload=cold threads=1 runs=%d wall_us=%.1f inproc_us=%.1f init_us=%.1f rss_kb=%.0f\n",
	       label, n, wall_median, median(inproc, n), median(init, n), median(rss, n));
	fflush(stdout);
	return 0;
}

/* Resident and proportional memory (KiB) of PID and every process below it. */
static void tree_memory(pid_t root, long *rss_kb, long *pss_kb)
{
	pid_t pids[8192];
	int count = 1, scanned = 0;
	pids[0] = root;
	*rss_kb = *pss_kb = 0;
	while (scanned < count) {
		char path[320], buffer[4096];
		pid_t parent = pids[scanned++];
		/* children of every thread of parent */
		snprintf(path, sizeof path, "/proc/%d/task", (int)parent);
		DIR *tasks = opendir(path);
		struct dirent *task;
		while (tasks && (task = readdir(tasks)) != NULL) {
			if (task->d_name[0] == '.') continue;
			snprintf(path, sizeof path, "/proc/%d/task/%s/children", (int)parent, task->d_name);
			FILE *children = fopen(path, "r");
			int child;
			while (children && fscanf(children, "%d", &child) == 1 && count < 8192) pids[count++] = child;
			if (children) fclose(children);
		}
		if (tasks) closedir(tasks);
		snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)parent);
		FILE *rollup = fopen(path, "r");
		while (rollup && fgets(buffer, sizeof buffer, rollup)) {
			long value;
			if (sscanf(buffer, "Rss: %ld kB", &value) == 1) *rss_kb += value;
			else if (sscanf(buffer, "Pss: %ld kB", &value) == 1) *pss_kb += value;
		}
		if (rollup) fclose(rollup);
	}
}

static int compare_u32_plain(const void *a, const void *b);

/* --clients N: N client processes of one thread each, started together; see the top of the file. */
static int run_group(const char *self, const char *workload, const char *module_path, int clients, pid_t server)
{
	int ready[2], go[2], i, failed = 0;
	pid_t *children = calloc((size_t)clients, sizeof *children);
	char seconds_text[32], warmup_text[32], ready_text[16], go_text[16], directory[] = "/tmp/p11bench.XXXXXX";
	long rss_before = 0, pss_before = 0, rss_idle = 0, pss_idle = 0;

	if (!mkdtemp(directory)) die("mkdtemp", 0);
	if (pipe(ready) != 0 || pipe(go) != 0) die("pipe", 0);
	/* The parent's ends must not leak into the clients: a client holding go[1] would never see the start. */
	fcntl(ready[0], F_SETFD, FD_CLOEXEC);
	fcntl(go[1], F_SETFD, FD_CLOEXEC);
	if (server > 0) tree_memory(server, &rss_before, &pss_before);
	snprintf(seconds_text, sizeof seconds_text, "%.3f", seconds);
	snprintf(warmup_text, sizeof warmup_text, "%ld", warmup);
	snprintf(ready_text, sizeof ready_text, "%d", ready[1]);
	snprintf(go_text, sizeof go_text, "%d", go[0]);
	for (i = 0; i < clients; i++) {
		char output[sizeof directory + 32];
		char *argv[24];
		int a = 0;
		snprintf(output, sizeof output, "%s/client-%d", directory, i);
		argv[a++] = (char *)self;
		argv[a++] = "--label"; argv[a++] = (char *)label;
		argv[a++] = "--pin"; argv[a++] = (char *)pin;
		argv[a++] = "--seconds"; argv[a++] = seconds_text;
		argv[a++] = "--warmup"; argv[a++] = warmup_text;
		if (token_label) { argv[a++] = "--token"; argv[a++] = (char *)token_label; }
		argv[a++] = "--member-ready"; argv[a++] = ready_text;
		argv[a++] = "--member-go"; argv[a++] = go_text;
		argv[a++] = "--member-output"; argv[a++] = strdup(output);
		argv[a++] = (char *)workload;
		argv[a++] = (char *)module_path;
		argv[a] = NULL;
		if (posix_spawn(&children[i], self, NULL, NULL, argv, current_environment()) != 0) die("posix_spawn", 0);
		/* One client sets up (connects, logs in, warms up) at a time: SoftHSM's file store does not
		 * take many processes logging in to one token at once (some see no token, or CKR_GENERAL_ERROR). */
		char status;
		if (read(ready[0], &status, 1) != 1 || status != 'R') {
			failed = 1;
			clients = i + 1;
			break;
		}
	}
	close(ready[1]);
	close(go[0]);
	if (!failed && server > 0) {
		usleep(200000); /* the server settles: a worker it starts to replace a spare, say */
		tree_memory(server, &rss_idle, &pss_idle);
	}
	if (failed)
		for (i = 0; i < clients; i++) kill(children[i], SIGKILL);
	close(go[1]); /* every client starts now */
	double ops_per_s = 0;
	uint64_t ops = 0, kept = 0, host_cpu = 0;
	uint32_t *all = NULL;
	for (i = 0; i < clients; i++) {
		int status;
		waitpid(children[i], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
	}
	for (i = 0; i < clients && !failed; i++) {
		char output[sizeof directory + 32];
		unsigned long long client_ops, client_kept, client_cpu;
		double elapsed;
		snprintf(output, sizeof output, "%s/client-%d", directory, i);
		FILE *in = fopen(output, "rb");
		if (!in || fscanf(in, "%llu %lf %llu %llu", &client_ops, &elapsed, &client_kept, &client_cpu) != 4 || fgetc(in) != '\n') {
			failed = 1;
			if (in) fclose(in);
			break;
		}
		all = realloc(all, (kept + client_kept + 1) * sizeof *all);
		if (fread(all + kept, sizeof *all, client_kept, in) != client_kept) failed = 1;
		fclose(in);
		unlink(output);
		kept += client_kept;
		ops += client_ops;
		host_cpu += client_cpu;
		if (elapsed > 0) ops_per_s += (double)client_ops / elapsed;
	}
	for (i = 0; i < clients; i++) { /* what a failed run left */
		char output[sizeof directory + 32];
		snprintf(output, sizeof output, "%s/client-%d", directory, i);
		unlink(output);
	}
	rmdir(directory);
	if (failed) {
		printf("ERROR config=%s what=clients\n", label);
		fprintf(stderr, "p11bench: a client of --clients %d failed (see its lines above)\n", clients);
		return 1;
	}
	qsort(all, kept, sizeof *all, compare_u32_plain);
	printf("RESULT config=%s workload=many-%s threads=%d clients=%d ops=%llu seconds=%.3f ops_per_s=%.1f p50_us=%.2f "
	       "p99_us=%.2f host_cpu_us=%llu",
	       label, workload, clients, clients, (unsigned long long)ops, seconds, ops_per_s, percentile_us(all, kept, 0.50),
	       percentile_us(all, kept, 0.99), (unsigned long long)host_cpu);
	if (server > 0)
		printf(" server_rss_kb_before=%ld server_rss_kb_idle=%ld rss_per_client_kb=%.0f pss_per_client_kb=%.0f", rss_before,
		       rss_idle, (double)(rss_idle - rss_before) / clients, (double)(pss_idle - pss_before) / clients);
	printf("\n");
	fflush(stdout);
	return 0;
}

static int compare_u32_plain(const void *a, const void *b)
{
	return compare_u32(a, b);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: p11bench [--threads N] [--seconds S | --ops N] [--warmup N] [--pin PIN] [--token LABEL]\n"
		"                [--label L] WORKLOAD MODULE\n"
		"       p11bench [--label L] cold MODULE\n"
		"       p11bench [--label L] [--runs N] cold-spawn MODULE\n"
		"       p11bench --clients N [--server-pid PID] [options] WORKLOAD MODULE\n"
		"workloads: random32 info getattr find sign-ec sign-rsa digest-1m mix\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int i, runs = 5, clients = 0;
	pid_t server_pid = 0;
	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		if (i + 1 >= argc) usage();
		const char *option = argv[i], *value = argv[i + 1];
		if (!strcmp(option, "--threads")) threads = atoi(value);
		else if (!strcmp(option, "--seconds")) seconds = atof(value);
		else if (!strcmp(option, "--ops")) total_ops = atol(value);
		else if (!strcmp(option, "--warmup")) warmup = atol(value);
		else if (!strcmp(option, "--pin")) pin = value;
		else if (!strcmp(option, "--token")) token_label = value;
		else if (!strcmp(option, "--label")) label = value;
		else if (!strcmp(option, "--runs")) runs = atoi(value);
		else if (!strcmp(option, "--clients")) clients = atoi(value);
		else if (!strcmp(option, "--server-pid")) server_pid = (pid_t)atoi(value);
		else if (!strcmp(option, "--member-ready")) member_ready_fd = atoi(value);
		else if (!strcmp(option, "--member-go")) member_go_fd = atoi(value);
		else if (!strcmp(option, "--member-output")) member_output = value;
		else usage();
	}
	if (argc - i != 2) usage();
	if (threads < 1 || threads > MAX_THREADS) usage();
	const char *mode = argv[i], *module_path = argv[i + 1];
	if (!strcmp(mode, "cold")) return run_cold(module_path);
	if (!strcmp(mode, "cold-spawn")) {
		char self[4096];
		ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
		if (n <= 0) die("readlink /proc/self/exe", 0);
		self[n] = 0;
		return run_cold_spawn(self, module_path, runs);
	}
	if (member_output) reservoir = MEMBER_RESERVOIR;
	if (clients > 1) {
		if (clients > 4096) usage();
		char self[4096];
		ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
		if (n <= 0) die("readlink /proc/self/exe", 0);
		self[n] = 0;
		for (int w = 0; w < W_MIX; w++)
			if (!strcmp(mode, workload_names[w])) return run_group(self, mode, module_path, clients, server_pid);
		usage();
	}
	for (int w = 0; w <= W_MIX; w++)
		if (!strcmp(mode, workload_names[w])) return run_workload((enum workload)w, module_path);
	usage();
	return 2;
}
