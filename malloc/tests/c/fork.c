/* fork in a multi-threaded program: worker threads allocate and free without pause (small,
 * large and huge blocks, frees of each other's blocks) while the main thread forks again
 * and again. Every child allocates in every path, starts a thread of its own, forks a
 * grandchild, and exits 0; a child that deadlocks is killed by an alarm. Prints "ok" and
 * exits 0 when every child succeeded. Usage: fork [rounds] */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

enum { WORKERS = 4, KEPT = 64 };
static atomic_int stop;
/* A block each worker hands to the next one to free (remote frees). */
static _Atomic(void *) handoff[WORKERS];

static size_t random_size(uint64_t *state) {
    uint64_t choice = next_random(state) % 100;
    if (choice < 80) return 32 + next_random(state) % 2000;        /* small */
    if (choice < 98) return 40000 + next_random(state) % 900000;   /* large */
    return ((size_t)3 << 20) + next_random(state) % 100000;        /* huge */
}

static void *worker(void *argument) {
    int index = (int)(uintptr_t)argument;
    uint64_t state = 0x51ED2701u + (uint64_t)index;
    void *kept[KEPT] = {0};
    size_t sizes[KEPT] = {0};
    for (unsigned long step = 0; !atomic_load(&stop); step++) {
        int slot = (int)(step % KEPT);
        if (kept[slot] != NULL) {
            CHECK(intact(kept[slot], sizes[slot] < 32 ? sizes[slot] : 32, (uintptr_t)kept[slot]));
            free(kept[slot]);
        }
        sizes[slot] = random_size(&state);
        kept[slot] = step % 7 == 0 ? calloc(1, sizes[slot]) : malloc(sizes[slot]);
        CHECK(kept[slot] != NULL);
        fill(kept[slot], sizes[slot] < 32 ? sizes[slot] : 32, (uintptr_t)kept[slot]);
        void *given = malloc(64);
        CHECK(given != NULL);
        free(atomic_exchange(&handoff[(index + 1) % WORKERS], given));
    }
    for (int slot = 0; slot < KEPT; slot++) free(kept[slot]);
    return NULL;
}

static void *child_thread(void *argument) {
    (void)argument;
    for (int i = 0; i < 2000; i++) free(malloc((size_t)(i % 5000) + 1));
    return malloc(123);
}

/* What each child does: every allocation path, a thread, and a fork of its own. */
static int child_work(int depth) {
    alarm(20);
    uint64_t state = 0xC0FFEEu + (uint64_t)getpid();
    void *blocks[200];
    for (int i = 0; i < 200; i++) {
        size_t size = random_size(&state);
        blocks[i] = i % 3 == 0 ? calloc(1, size) : malloc(size);
        CHECK(blocks[i] != NULL);
        fill(blocks[i], 32, (uintptr_t)i);
    }
    for (int i = 0; i < 200; i++) {
        blocks[i] = realloc(blocks[i], random_size(&state));
        CHECK(blocks[i] != NULL && intact(blocks[i], 32, (uintptr_t)i));
        void *aligned = NULL;
        CHECK(posix_memalign(&aligned, 4096, 5000) == 0);
        free(aligned);
    }
    for (int i = 0; i < 200; i++) free(blocks[i]);
    pthread_t thread;
    void *result = NULL;
    CHECK(pthread_create(&thread, NULL, child_thread, NULL) == 0);
    CHECK(pthread_join(thread, &result) == 0);
    free(result);
    if (depth == 0) {
        pid_t grandchild = fork();
        CHECK(grandchild >= 0);
        if (grandchild == 0) exit(child_work(1));
        int status = 0;
        CHECK(waitpid(grandchild, &status, 0) == grandchild);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    pthread_t workers[WORKERS];
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_create(&workers[i], NULL, worker, (void *)(uintptr_t)i) == 0);
    for (int round = 0; round < rounds; round++) {
        /* Let the workers run a little between forks, so forks land at many points. */
        for (int i = 0; i < 100 * (round % 5); i++) free(malloc(100));
        pid_t child = fork();
        CHECK(child >= 0);
        if (child == 0) exit(child_work(0));
        int status = 0;
        CHECK(waitpid(child, &status, 0) == child);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "child %d of round %d: %s %d\n", child, round,
                    WIFSIGNALED(status) ? "killed by signal" : "exit status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            return 1;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(workers[i], NULL) == 0);
    for (int i = 0; i < WORKERS; i++) free(atomic_load(&handoff[i]));
    puts("ok");
    return 0;
}
