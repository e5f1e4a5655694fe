/* Shared by the C test programs: checks that print what failed and exit with status 1. */
#ifndef CHECK_H
#define CHECK_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s (errno %d)\n", __FILE__, __LINE__,  \
                    #condition, errno);                                                    \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

#define ALIGNED(pointer, alignment) (((uintptr_t)(pointer) & ((uintptr_t)(alignment) - 1)) == 0)

/* Sizes kept out of the compiler's sight, so that calls are not folded or warned about. */
static volatile size_t size_max_v = SIZE_MAX;
static volatile size_t ptrdiff_max_v = PTRDIFF_MAX;
static inline size_t hide(size_t value) {
    volatile size_t hidden = value;
    return hidden;
}

/* A pattern unique to (seed, index), to detect overlapping or corrupted blocks. */
static inline unsigned char pattern(uintptr_t seed, size_t index) {
    return (unsigned char)((seed * 2654435761u) ^ (index * 31u) ^ (index >> 8));
}

static inline void fill(void *block, size_t size, uintptr_t seed) {
    unsigned char *bytes = block;
    for (size_t i = 0; i < size; i++) bytes[i] = pattern(seed, i);
}

static inline int intact(const void *block, size_t size, uintptr_t seed) {
    const unsigned char *bytes = block;
    for (size_t i = 0; i < size; i++)
        if (bytes[i] != pattern(seed, i)) return 0;
    return 1;
}

/* The same, on every 61st byte and the last one: cheap enough for big blocks in stress runs. */
static inline void fill_sparse(void *block, size_t size, uintptr_t seed) {
    unsigned char *bytes = block;
    for (size_t i = 0; i < size; i += 61) bytes[i] = pattern(seed, i);
    if (size > 0) bytes[size - 1] = pattern(seed, size - 1);
}

/* Every 61st byte below `size` (a prefix of a block filled with `fill_sparse`). */
static inline int intact_stride(const void *block, size_t size, uintptr_t seed) {
    const unsigned char *bytes = block;
    for (size_t i = 0; i < size; i += 61)
        if (bytes[i] != pattern(seed, i)) return 0;
    return 1;
}

static inline int intact_sparse(const void *block, size_t size, uintptr_t seed) {
    const unsigned char *bytes = block;
    return intact_stride(block, size, seed) && (size == 0 || bytes[size - 1] == pattern(seed, size - 1));
}

/* A small xorshift generator, so runs are reproducible. */
static inline uint64_t next_random(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

#endif
