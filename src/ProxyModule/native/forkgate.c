/* Fork gate for p11proxy.so.
 *
 * Managed code must not be running in any thread when the host forks: a NativeAOT runtime copied
 * mid-call into a child hangs or crashes it (see shared/docs/nativeaot-module.md). Every entry of
 * the function table is a C trampoline that holds a read lock for the whole managed call; a
 * pthread_atfork prepare handler takes the lock for writing, so fork waits until no thread is
 * inside, and no thread can enter until fork is done. Written in C because a gate in managed
 * code leaves a window before it is taken and after it is released.
 *
 * The trampolines are uniform: every PKCS#11 argument is an integer or a pointer, so on the
 * x86-64 and aarch64 calling conventions a function taking nine such words can forward any
 * PKCS#11 call (unused words are never read by the managed implementation).
 */
#include <pthread.h>
#include <stdint.h>

/* The 92 entries of CK_FUNCTION_LIST_3_0, then the 2.40 list's own C_GetInfo and C_GetMechanismInfo. */
#define P11PROXY_FUNCTIONS 94
#define WAIT_FOR_SLOT_EVENT 67

typedef uintptr_t word;
typedef word (*implementation)(word, word, word, word, word, word, word, word, word);

static implementation implementations[P11PROXY_FUNCTIONS];

/* Counts forks into this process image: the module compares it with the value it saw at
 * C_Initialize instead of calling getpid() on every call. */
static volatile int fork_generation;
static pthread_rwlock_t gate;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void gate_init(void)
{
	pthread_rwlockattr_t attributes;
	pthread_rwlockattr_init(&attributes);
	/* A pending fork must not starve behind a stream of new calls. */
	pthread_rwlockattr_setkind_np(&attributes, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&gate, &attributes);
	pthread_rwlockattr_destroy(&attributes);
}

static void before_fork(void) { pthread_rwlock_wrlock(&gate); }
static void after_fork_parent(void) { pthread_rwlock_unlock(&gate); }
static void after_fork_child(void)
{
	fork_generation++;
	gate_init();
}

static void install(void)
{
	gate_init();
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

#define TRAMPOLINE(i) \
	static word trampoline_##i(word a, word b, word c, word d, word e, word f, word g, word h, word j) \
	{ \
		word rv; \
		if (i == WAIT_FOR_SLOT_EVENT) /* may block for ever: must not hold fork off */ \
			return implementations[i](a, b, c, d, e, f, g, h, j); \
		pthread_rwlock_rdlock(&gate); \
		rv = implementations[i](a, b, c, d, e, f, g, h, j); \
		pthread_rwlock_unlock(&gate); \
		return rv; \
	}

#define T10(n) TRAMPOLINE(n##0) TRAMPOLINE(n##1) TRAMPOLINE(n##2) TRAMPOLINE(n##3) TRAMPOLINE(n##4) \
	TRAMPOLINE(n##5) TRAMPOLINE(n##6) TRAMPOLINE(n##7) TRAMPOLINE(n##8) TRAMPOLINE(n##9)
TRAMPOLINE(0) TRAMPOLINE(1) TRAMPOLINE(2) TRAMPOLINE(3) TRAMPOLINE(4)
TRAMPOLINE(5) TRAMPOLINE(6) TRAMPOLINE(7) TRAMPOLINE(8) TRAMPOLINE(9)
T10(1) T10(2) T10(3) T10(4) T10(5) T10(6) T10(7) T10(8)
TRAMPOLINE(90) TRAMPOLINE(91) TRAMPOLINE(92) TRAMPOLINE(93)

#define R10(n) trampoline_##n##0, trampoline_##n##1, trampoline_##n##2, trampoline_##n##3, trampoline_##n##4, \
	trampoline_##n##5, trampoline_##n##6, trampoline_##n##7, trampoline_##n##8, trampoline_##n##9
static const implementation trampolines[P11PROXY_FUNCTIONS] = {
	trampoline_0, trampoline_1, trampoline_2, trampoline_3, trampoline_4,
	trampoline_5, trampoline_6, trampoline_7, trampoline_8, trampoline_9,
	R10(1), R10(2), R10(3), R10(4), R10(5), R10(6), R10(7), R10(8),
	trampoline_90, trampoline_91, trampoline_92, trampoline_93,
};

/* Where the fork counter lives (read by the module without a system call). */
volatile int *p11proxy_fork_generation(void)
{
	pthread_once(&once, install);
	return &fork_generation;
}

/* Registers the managed implementations and fills `table` with the gated entry points. */
int p11proxy_gate_wrap(const void *const *managed, void **table, int count)
{
	int i;
	if (count != P11PROXY_FUNCTIONS)
		return -1;
	pthread_once(&once, install);
	for (i = 0; i < count; i++) {
		implementations[i] = (implementation)managed[i];
		table[i] = (void *)trampolines[i];
	}
	return 0;
}
