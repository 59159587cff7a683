/* The floor under any RPC on this machine: two processes doing round trips over a unix socket
 * pair, with nothing else. A C_GenerateRandom through any proxy costs at least one 48-byte round
 * trip plus the module's own work; a 1 MiB digest at least one 1 MiB round trip plus the hash.
 * usage: pingpong --label NAME --seconds S
 * prints RESULT lines like p11bench's (workload roundtrip-48 and roundtrip-1m). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int compare(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

static int full(int fd, char *buffer, size_t length, int reading)
{
	size_t done = 0;
	while (done < length) {
		ssize_t n = reading ? read(fd, buffer + done, length - done) : write(fd, buffer + done, length - done);
		if (n <= 0) return -1;
		done += (size_t)n;
	}
	return 0;
}

static void run(const char *label, const char *workload, size_t request, double seconds)
{
	int pair[2];
	static char buffer[(1 << 20) + 64];
	static float samples[2000000];
	size_t count = 0;
	double start, end, elapsed;
	pid_t child;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) { perror("socketpair"); exit(1); }
	child = fork();
	if (child == 0) {
		close(pair[0]);
		/* The server: read a whole request, answer 48 bytes. */
		while (full(pair[1], buffer, request, 1) == 0)
			if (full(pair[1], buffer, 48, 0) != 0) break;
		_exit(0);
	}
	close(pair[1]);
	memset(buffer, 1, sizeof buffer);
	start = now_us();
	end = start + seconds * 1e6;
	while (count < sizeof samples / sizeof samples[0]) {
		double before = now_us(), after;
		if (full(pair[0], buffer, request, 0) != 0 || full(pair[0], buffer, 48, 1) != 0) { fprintf(stderr, "pingpong: peer lost\n"); exit(1); }
		after = now_us();
		samples[count++] = (float)(after - before);
		if (after >= end) break;
	}
	elapsed = (now_us() - start) / 1e6;
	close(pair[0]);
	waitpid(child, NULL, 0);
	qsort(samples, count, sizeof samples[0], compare);
	printf("RESULT config=%s workload=%s threads=1 ops=%zu seconds=%.3f ops_per_s=%.1f p50_us=%.2f p99_us=%.2f\n",
	       label, workload, count, elapsed, count / elapsed, samples[count / 2], samples[count * 99 / 100]);
}

int main(int argc, char **argv)
{
	const char *label = "floor";
	double seconds = 1;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--label") == 0) label = argv[i + 1];
		else if (strcmp(argv[i], "--seconds") == 0) seconds = atof(argv[i + 1]);
	}
	run(label, "roundtrip-48", 48, seconds);
	run(label, "roundtrip-1m", 1 << 20, seconds);
	return 0;
}
