/* The Larson-Krishnan server simulation ("Memory allocation for long-running server
 * applications", ISMM 1998), for the harness's preload family: run with LD_PRELOAD to
 * measure a malloc.
 *
 *   larson <threads> <slots> <rounds> <generations> <seed>
 *
 * The main thread fills one array of <slots> blocks per thread. Each thread then does
 * <rounds> rounds of "free a random slot, malloc a block of a new random size (16 B to
 * 1 KiB, three in four up to 128 B), write to it", then starts a successor thread that
 * inherits its array and its random state, and exits; after <generations> generations the
 * last thread of each chain reports to the main thread, which frees what is left. So
 * blocks are freed by threads other than the ones that allocated them, after those exited.
 *
 * Deterministic: each chain has its own generator, and the checksum (sizes and contents
 * of the blocks freed) does not depend on the threads' interleaving. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 128 bytes apart (two cache lines, the pair an adjacent-line prefetcher fetches): each
 * chain's thread writes its state and checksum every round and reads its blocks pointer,
 * and with the chains 56 bytes apart (one calloc) the two threads' accesses shared a cache
 * line, which then bounced between their CPUs at every round: half of the program's time
 * went to that, whatever malloc was preloaded (2 threads: 1.0-1.3 s with core-alloc, 0.74-0.91
 * with mimalloc; padded, 0.47-0.56 and 0.41). */
struct __attribute__((aligned(128))) chain {
    void **blocks;
    size_t slots;
    unsigned long rounds;
    unsigned long generations;
    unsigned long generation;
    uint64_t state;
    uint64_t checksum;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static size_t chains_done;

static uint64_t next(uint64_t *state) {
    /* xorshift64* */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* A block's size follows from its tag: 16 B to 1 KiB, three in four up to 128 B. */
static size_t block_size(uint64_t tag) {
    return (tag & 3) != 0 ? 16 + (tag >> 8) % 113 : 16 + (tag >> 8) % 1009;
}

/* A new block of a random size: its first 8 bytes hold its tag, its last byte the tag's
 * low byte. */
static void *make(uint64_t *state) {
    uint64_t tag = next(state);
    size_t size = block_size(tag);
    unsigned char *block = malloc(size);
    if (block == NULL) {
        fprintf(stderr, "larson: malloc(%zu) failed\n", size);
        exit(1);
    }
    memcpy(block, &tag, sizeof tag);
    block[size - 1] = (unsigned char)tag;
    return block;
}

static uint64_t check_and_free(void *pointer) {
    unsigned char *block = pointer;
    uint64_t tag;
    memcpy(&tag, block, sizeof tag);
    size_t size = block_size(tag);
    if (block[size - 1] != (unsigned char)tag) {
        fprintf(stderr, "larson: a block was overwritten\n");
        exit(1);
    }
    free(block);
    return size * 31 + tag;
}

static void *run(void *argument);

static void start(struct chain *chain) {
    pthread_attr_t attributes;
    pthread_t thread;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attributes, run, chain) != 0) {
        fprintf(stderr, "larson: pthread_create failed\n");
        exit(1);
    }
    pthread_attr_destroy(&attributes);
}

static void *run(void *argument) {
    struct chain *chain = argument;
    for (unsigned long round = 0; round < chain->rounds; round++) {
        size_t slot = next(&chain->state) % chain->slots;
        chain->checksum += check_and_free(chain->blocks[slot]);
        chain->blocks[slot] = make(&chain->state);
    }
    chain->generation++;
    if (chain->generation < chain->generations) {
        start(chain); /* the successor inherits the array; this thread exits */
    } else {
        pthread_mutex_lock(&lock);
        chains_done++;
        pthread_cond_signal(&finished);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: larson <threads> <slots> <rounds> <generations> <seed>\n");
        return 2;
    }
    size_t threads = strtoul(argv[1], NULL, 10);
    size_t slots = strtoul(argv[2], NULL, 10);
    unsigned long rounds = strtoul(argv[3], NULL, 10);
    unsigned long generations = strtoul(argv[4], NULL, 10);
    uint64_t seed = strtoull(argv[5], NULL, 10);
    if (threads == 0 || slots == 0 || generations == 0) {
        fprintf(stderr, "larson: threads, slots and generations must be positive\n");
        return 2;
    }
    struct chain *chains = calloc(threads, sizeof *chains);
    if (chains == NULL) {
        return 1;
    }
    for (size_t index = 0; index < threads; index++) {
        struct chain *chain = &chains[index];
        chain->slots = slots;
        chain->rounds = rounds;
        chain->generations = generations;
        chain->state = (seed + 1) * 0x9E3779B97F4A7C15ULL + index * 0xD1B54A32D192ED03ULL;
        chain->state |= 1;
        chain->blocks = malloc(slots * sizeof *chain->blocks);
        if (chain->blocks == NULL) {
            return 1;
        }
        for (size_t slot = 0; slot < slots; slot++) {
            chain->blocks[slot] = make(&chain->state);
        }
    }
    for (size_t index = 0; index < threads; index++) {
        start(&chains[index]);
    }
    pthread_mutex_lock(&lock);
    while (chains_done < threads) {
        pthread_cond_wait(&finished, &lock);
    }
    pthread_mutex_unlock(&lock);
    uint64_t checksum = 0;
    for (size_t index = 0; index < threads; index++) {
        for (size_t slot = 0; slot < slots; slot++) {
            chains[index].checksum += check_and_free(chains[index].blocks[slot]);
        }
        free(chains[index].blocks);
        checksum = checksum * 1000003 + chains[index].checksum;
    }
    free(chains);
    printf("larson threads %zu slots %zu rounds %lu generations %lu checksum %llu\n", threads, slots, rounds,
           generations, (unsigned long long)checksum);
    return 0;
}
