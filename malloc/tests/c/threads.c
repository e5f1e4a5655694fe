/* Threads: memory of threads that exited, blocks freed by other threads, allocation from
 * thread-exit destructors, and many threads making their first allocation at once. One
 * subcommand each; prints "ok" and exits 0 when every check holds. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>

#include "check.h"

/* ---- exit-churn: 1000 short-lived threads, 8 at a time. Each allocates about 1 MiB in
 * blocks of many sizes, frees half itself and leaves half for the main thread, which frees
 * them after the thread has exited (frees into the slabs of a slot given up at exit). */

enum { CHURN_THREADS = 1000, CHURN_BATCH = 8, CHURN_BLOCKS = 4000 };

struct churn {
    void *left[CHURN_BLOCKS / 2];
    size_t sizes[CHURN_BLOCKS / 2];
    int index;
};

static void *churn_thread(void *argument) {
    struct churn *work = argument;
    uint64_t state = 0x1234567u + (uint64_t)work->index * 7919u;
    void *mine[CHURN_BLOCKS / 2];
    for (int i = 0; i < CHURN_BLOCKS; i++) {
        size_t size = 8 + next_random(&state) % 500;
        if (i % 97 == 0) size = 40000 + next_random(&state) % 100000;
        void *block = malloc(size);
        CHECK(block != NULL);
        fill(block, size < 64 ? size : 64, (uintptr_t)block);
        if (i % 2 == 0) {
            work->left[i / 2] = block;
            work->sizes[i / 2] = size < 64 ? size : 64;
        } else {
            mine[i / 2] = block;
        }
    }
    for (int i = 0; i < CHURN_BLOCKS / 2; i++) free(mine[i]);
    return NULL;
}

static void exit_churn(void) {
    static struct churn work[CHURN_BATCH];
    for (int round = 0; round < CHURN_THREADS / CHURN_BATCH; round++) {
        pthread_t threads[CHURN_BATCH];
        for (int i = 0; i < CHURN_BATCH; i++) {
            work[i].index = round * CHURN_BATCH + i;
            CHECK(pthread_create(&threads[i], NULL, churn_thread, &work[i]) == 0);
        }
        for (int i = 0; i < CHURN_BATCH; i++) CHECK(pthread_join(threads[i], NULL) == 0);
        for (int i = 0; i < CHURN_BATCH; i++) {
            for (int j = 0; j < CHURN_BLOCKS / 2; j++) {
                CHECK(intact(work[i].left[j], work[i].sizes[j], (uintptr_t)work[i].left[j]));
                free(work[i].left[j]);
            }
        }
    }
    /* Everything is freed: what exited threads cached can go back to the system now. */
    malloc_trim(0);
}

/* ---- cross-free: producers allocate, consumers free, through a locked ring; every block
 * carries a pattern checked before its free. */

enum { RING = 1024, PER_PRODUCER = 200000, PRODUCERS = 2, CONSUMERS = 2 };
static void *ring[RING];
static size_t ring_sizes[RING];
static int ring_head, ring_count, producers_done;
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_changed = PTHREAD_COND_INITIALIZER;

static void *producer(void *argument) {
    uint64_t state = 0xABCDEFu + (uintptr_t)argument;
    for (int i = 0; i < PER_PRODUCER; i++) {
        size_t size = 16 + next_random(&state) % 200;
        void *block = malloc(size);
        CHECK(block != NULL);
        fill(block, size, (uintptr_t)block);
        pthread_mutex_lock(&ring_lock);
        while (ring_count == RING) pthread_cond_wait(&ring_changed, &ring_lock);
        int slot = (ring_head + ring_count) % RING;
        ring[slot] = block;
        ring_sizes[slot] = size;
        ring_count++;
        pthread_cond_broadcast(&ring_changed);
        pthread_mutex_unlock(&ring_lock);
    }
    pthread_mutex_lock(&ring_lock);
    producers_done++;
    pthread_cond_broadcast(&ring_changed);
    pthread_mutex_unlock(&ring_lock);
    return NULL;
}

static void *consumer(void *argument) {
    (void)argument;
    for (;;) {
        pthread_mutex_lock(&ring_lock);
        while (ring_count == 0 && producers_done < PRODUCERS) pthread_cond_wait(&ring_changed, &ring_lock);
        if (ring_count == 0) {
            pthread_mutex_unlock(&ring_lock);
            return NULL;
        }
        void *block = ring[ring_head];
        size_t size = ring_sizes[ring_head];
        ring_head = (ring_head + 1) % RING;
        ring_count--;
        pthread_cond_broadcast(&ring_changed);
        pthread_mutex_unlock(&ring_lock);
        CHECK(intact(block, size, (uintptr_t)block));
        free(block);
    }
}

static void cross_free(void) {
    pthread_t threads[PRODUCERS + CONSUMERS];
    for (int i = 0; i < PRODUCERS; i++) CHECK(pthread_create(&threads[i], NULL, producer, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < CONSUMERS; i++) CHECK(pthread_create(&threads[PRODUCERS + i], NULL, consumer, NULL) == 0);
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
}

/* ---- exit-destructors: allocations, reallocations and frees from pthread key destructors,
 * which may run before or after the allocator's own exit hook. */

static pthread_key_t keys[4];

static void key_destructor(void *value) {
    CHECK(intact(value, 100, (uintptr_t)value));
    void *more = malloc(3000);
    CHECK(more != NULL);
    more = realloc(more, 300000);
    CHECK(more != NULL);
    free(more);
    free(value);
}

static void *destructor_thread(void *argument) {
    (void)argument;
    for (int i = 0; i < 4; i++) {
        void *value = malloc(100);
        CHECK(value != NULL);
        fill(value, 100, (uintptr_t)value);
        CHECK(pthread_setspecific(keys[i], value) == 0);
    }
    return malloc(50); /* freed by the joining thread */
}

static void exit_destructors(void) {
    for (int i = 0; i < 4; i++) CHECK(pthread_key_create(&keys[i], key_destructor) == 0);
    for (int round = 0; round < 50; round++) {
        pthread_t threads[8];
        for (int i = 0; i < 8; i++) CHECK(pthread_create(&threads[i], NULL, destructor_thread, NULL) == 0);
        for (int i = 0; i < 8; i++) {
            void *result = NULL;
            CHECK(pthread_join(threads[i], &result) == 0);
            free(result);
        }
    }
}

/* ---- first-touch: 32 threads whose first allocation happens at the same moment. */

enum { TOUCHERS = 32 };
static pthread_barrier_t start_line;

static void *first_touch_thread(void *argument) {
    (void)argument;
    pthread_barrier_wait(&start_line);
    void *blocks[100];
    for (int i = 0; i < 100; i++) {
        blocks[i] = malloc((size_t)(i * 37 % 3000) + 1);
        CHECK(blocks[i] != NULL);
    }
    for (int i = 0; i < 100; i++) free(blocks[i]);
    return NULL;
}

static void first_touch(void) {
    pthread_t threads[TOUCHERS];
    CHECK(pthread_barrier_init(&start_line, NULL, TOUCHERS) == 0);
    for (int i = 0; i < TOUCHERS; i++) CHECK(pthread_create(&threads[i], NULL, first_touch_thread, NULL) == 0);
    for (int i = 0; i < TOUCHERS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
}

static const struct {
    const char *name;
    void (*run)(void);
} tests[] = {
    {"exit-churn", exit_churn},
    {"cross-free", cross_free},
    {"exit-destructors", exit_destructors},
    {"first-touch", first_touch},
};

int main(int argc, char **argv) {
    CHECK(argc == 2);
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (strcmp(argv[1], tests[i].name) == 0) {
            tests[i].run();
            puts("ok");
            return 0;
        }
    }
    fprintf(stderr, "unknown test %s\n", argv[1]);
    return 2;
}
