/* Producers and consumers (after xmalloc-test), for the harness's preload family: run with
 * LD_PRELOAD to measure a malloc.
 *
 *   xmalloc <producers> <consumers> <batches per producer> <objects per batch> <seed>
 *
 * Each producer mallocs batches of objects of 16 to 512 bytes, fills each, and hands each
 * batch (itself malloc'd) to the consumers through a bounded queue under a mutex and
 * condition variables; the consumers check, touch and free every object and the batch. So
 * every free is a free of a block another thread allocated.
 *
 * Deterministic: each producer has its own generator, and the checksum is a sum over all
 * objects, whichever consumer freed them. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE 64

struct batch {
    size_t count;
    unsigned char *objects[];
};

static struct batch *queue[QUEUE];
static size_t head, length, producers_left;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static unsigned long batches_per_producer;
static size_t objects_per_batch;
static uint64_t seed;
static uint64_t total;

static uint64_t next(uint64_t *state) {
    /* xorshift64* */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* An object's size follows from its tag, which its first 8 bytes hold. */
static size_t object_size(uint64_t tag) {
    return 16 + (tag >> 16) % 497;
}

static _Noreturn void fail(const char *what) {
    fprintf(stderr, "xmalloc: %s\n", what);
    exit(1);
}

static void *produce(void *argument) {
    uint64_t state = ((uint64_t)(uintptr_t)argument + 1) * 0x9E3779B97F4A7C15ULL + seed * 0xD1B54A32D192ED03ULL;
    state |= 1;
    for (unsigned long index = 0; index < batches_per_producer; index++) {
        struct batch *batch = malloc(sizeof *batch + objects_per_batch * sizeof batch->objects[0]);
        if (batch == NULL) {
            fail("malloc failed");
        }
        batch->count = objects_per_batch;
        for (size_t object = 0; object < objects_per_batch; object++) {
            uint64_t tag = next(&state);
            size_t size = object_size(tag);
            unsigned char *block = malloc(size);
            if (block == NULL) {
                fail("malloc failed");
            }
            memset(block, (int)(tag & 0xff), size);
            memcpy(block, &tag, sizeof tag);
            batch->objects[object] = block;
        }
        pthread_mutex_lock(&lock);
        while (length == QUEUE) {
            pthread_cond_wait(&not_full, &lock);
        }
        queue[(head + length) % QUEUE] = batch;
        length++;
        pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    producers_left--;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *consume(void *argument) {
    (void)argument;
    uint64_t sum = 0;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (length == 0 && producers_left > 0) {
            pthread_cond_wait(&not_empty, &lock);
        }
        if (length == 0) {
            pthread_mutex_unlock(&lock);
            break;
        }
        struct batch *batch = queue[head];
        head = (head + 1) % QUEUE;
        length--;
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&lock);
        for (size_t object = 0; object < batch->count; object++) {
            unsigned char *block = batch->objects[object];
            uint64_t tag;
            memcpy(&tag, block, sizeof tag);
            size_t size = object_size(tag);
            if (block[size / 2] != (unsigned char)tag || block[size - 1] != (unsigned char)tag) {
                fail("an object was overwritten");
            }
            sum += size * 31 + (tag & 0xffff);
            free(block);
        }
        free(batch);
    }
    pthread_mutex_lock(&lock);
    total += sum;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: xmalloc <producers> <consumers> <batches per producer> <objects per batch> <seed>\n");
        return 2;
    }
    size_t producers = strtoul(argv[1], NULL, 10);
    size_t consumers = strtoul(argv[2], NULL, 10);
    batches_per_producer = strtoul(argv[3], NULL, 10);
    objects_per_batch = strtoul(argv[4], NULL, 10);
    seed = strtoull(argv[5], NULL, 10);
    if (producers == 0 || consumers == 0 || producers + consumers > 256) {
        fprintf(stderr, "xmalloc: 1 to 255 producers and consumers\n");
        return 2;
    }
    pthread_t threads[256];
    producers_left = producers;
    for (size_t index = 0; index < producers + consumers; index++) {
        int started = index < producers
                          ? pthread_create(&threads[index], NULL, produce, (void *)(uintptr_t)index)
                          : pthread_create(&threads[index], NULL, consume, NULL);
        if (started != 0) {
            fail("pthread_create failed");
        }
    }
    for (size_t index = 0; index < producers + consumers; index++) {
        pthread_join(threads[index], NULL);
    }
    printf("xmalloc producers %zu consumers %zu batches %lu objects %zu checksum %llu\n", producers, consumers,
           batches_per_producer, objects_per_batch, (unsigned long long)total);
    return 0;
}
