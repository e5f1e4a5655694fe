/* The C torture program, run with libcorealloc.so preloaded (torture/README.md): many
 * threads calling every allocation function (malloc, calloc, realloc, reallocarray,
 * posix_memalign, aligned_alloc, memalign, valloc, free, malloc_usable_size, malloc_trim)
 * with random sizes (1 B to 8 MiB, log-uniform, mostly small) and alignments (up to 2 MiB),
 * every block's bytes holding a pattern of (block id, offset) that is checked before every
 * free and realloc and after every realloc (the preserved prefix). The scenarios are those
 * of the Rust torture (torture/src/scenarios.rs):
 *
 *   mix    N workers doing random operations, handing blocks to each other through shared
 *          exchange slots and freeing what short-lived threads left; a thread calling
 *          malloc_trim(0) every 20 ms;
 *   churn  short-lived threads, four at a time, exiting with live blocks that others free;
 *   adopt  short-lived producers allocate 64-byte blocks and exit with them live in a
 *          queue, two consumers free them, another thread keeps allocating 64-byte blocks;
 *   huge   blocks resized between 16 and 24 MiB and between 6 and 10 MiB (and now and then
 *          2 to 32 MiB) while two threads allocate and free 4 MiB and 600 KiB blocks and
 *          malloc_trim(0) runs every 20 ms.
 *
 * Prints "torture-c: ok ..." with counts of each call and exits 0; on a failure prints
 * "torture-c: FAILED ..." with the seed and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MIX, CHURN, ADOPT, HUGE, SCENARIOS };
static const char *const scenario_names[SCENARIOS] = {"mix", "churn", "adopt", "huge"};

enum {
    SLOTS = 48,                     /* blocks a mix worker holds */
    EXCHANGE = 32,                  /* shared exchange slots */
    ORPHAN_LIMIT = 8192,            /* blocks of exited threads kept for others to free */
    QUEUE_LIMIT = 65536,            /* producers wait beyond this */
    QUEUE_CAPACITY = QUEUE_LIMIT + 8192,
    STALL_LIMIT = 60,               /* seconds without progress: a deadlock */
};
#define WORKER_BUDGET ((size_t)48 << 20)
#define MAX_SIZE ((size_t)8 << 20)
#define MIB ((size_t)1 << 20)

/* ---- The run: seed, clock, failure ---- */

static uint64_t run_seed;
static struct timespec run_start;
static int inject_fault;
static atomic_int stop_flag;
static _Thread_local char thread_name[40] = "main";
static _Thread_local uint32_t thread_serial;
static atomic_uint next_serial = 1;

static double elapsed(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - run_start.tv_sec) + (double)(now.tv_nsec - run_start.tv_nsec) / 1e9;
}

/* Prints the failure with the seed and ends the process at once (the heap may be corrupt,
 * other threads are still running). The message is formatted on the stack. */
__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *format, ...) {
    char text[1024];
    int length = snprintf(text, sizeof text, "torture-c: FAILED after %.1f s (seed %llu, thread %s): ", elapsed(),
                          (unsigned long long)run_seed, thread_name);
    va_list arguments;
    va_start(arguments, format);
    if (length > 0 && (size_t)length < sizeof text)
        length += vsnprintf(text + length, sizeof text - (size_t)length, format, arguments);
    va_end(arguments);
    if (length < 0 || (size_t)length >= sizeof text - 1) length = (int)sizeof text - 2;
    text[length++] = '\n';
    ssize_t ignored = write(2, text, (size_t)length);
    (void)ignored;
    _exit(1);
}

static uint32_t my_serial(void) {
    if (thread_serial == 0) thread_serial = atomic_fetch_add(&next_serial, 1);
    return thread_serial;
}

/* ---- Counters (printed at the end; the test requires each to be non-zero) ---- */

enum {
    C_MALLOC, C_CALLOC, C_REALLOC, C_REALLOCARRAY, C_POSIX_MEMALIGN, C_ALIGNED_ALLOC, C_MEMALIGN,
    C_VALLOC, C_FREE, C_USABLE_SIZE, C_TRIM, C_BIG_ALIGN, C_CROSS_THREAD, C_AFTER_OWNER_EXIT,
    C_SHORT_THREADS, C_HUGE_REALLOC, C_PRODUCED_CONSUMED, C_BYTES_CHECKED, COUNTERS
};
static const char *const counter_names[COUNTERS] = {
    "malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc", "memalign",
    "valloc", "free", "malloc_usable_size", "malloc_trim", "big_align", "cross_thread", "after_owner_exit",
    "short_threads", "huge_realloc", "produced_consumed", "bytes_checked"};
static atomic_ullong counters[COUNTERS];
static atomic_ullong progress[SCENARIOS];

static void bump(int counter) { atomic_fetch_add_explicit(&counters[counter], 1, memory_order_relaxed); }
static void add(int counter, uint64_t amount) {
    atomic_fetch_add_explicit(&counters[counter], amount, memory_order_relaxed);
}
static void beat(int scenario) { atomic_fetch_add_explicit(&progress[scenario], 1, memory_order_relaxed); }
static int stopping(void) { return atomic_load_explicit(&stop_flag, memory_order_relaxed); }

/* ---- Random numbers: SplitMix64, one stream per thread ---- */

typedef struct { uint64_t state; } rng_t;

static uint64_t next(rng_t *rng) {
    uint64_t mixed = (rng->state += 0x9E3779B97F4A7C15ull);
    mixed = (mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9ull;
    mixed = (mixed ^ (mixed >> 27)) * 0x94D049BB133111EBull;
    return mixed ^ (mixed >> 31);
}
static rng_t rng_new(uint64_t stream) {
    rng_t rng = {run_seed ^ (stream * 0xA0761D6478BD642Full)};
    next(&rng);
    return rng;
}
static size_t below(rng_t *rng, size_t bound) { return (size_t)(((next(rng) >> 32) * bound) >> 32); }
static int percent(rng_t *rng, size_t p) { return below(rng, 100) < p; }
/* A log-uniform size below 1 << top (at least 1, at most 8 MiB). */
static size_t size_up_to(rng_t *rng, size_t top) {
    size_t low = (size_t)1 << below(rng, top);
    size_t size = low + below(rng, low);
    return size < MAX_SIZE ? size : MAX_SIZE;
}
/* 85% up to 4 KiB, 13% up to 1 MiB, 2% up to 8 MiB. */
static size_t random_size(rng_t *rng) {
    size_t pick = below(rng, 100);
    return size_up_to(rng, pick < 85 ? 12 : pick < 98 ? 20 : 23);
}

/* ---- The pattern of (block id, offset) ---- */

static inline uint64_t word(uint64_t id, size_t index) {
    uint64_t base = id * 0x9E3779B97F4A7C15ull ^ 0xD6E8FEB86659FD93ull;
    uint64_t spread = (uint64_t)index * 0xA0761D6478BD642Full;
    return base ^ ((spread << 17) | (spread >> 47));
}
static inline unsigned char pattern_byte(uint64_t id, size_t offset) {
    return (unsigned char)(word(id, offset / 8) >> (8 * (offset % 8)));
}

/* Writes the pattern into bytes [from, to) of the block. */
static void fill(unsigned char *bytes, size_t from, size_t to, uint64_t id) {
    size_t offset = from;
    for (; offset < to && offset % 8 != 0; offset++) bytes[offset] = pattern_byte(id, offset);
    for (; offset + 8 <= to; offset += 8) {
        uint64_t value = word(id, offset / 8);
        /* __builtin_memcpy: inlined even under -fno-builtin (which the build uses so that
         * allocation calls stay calls); a word a time, little-endian as pattern_byte reads. */
        __builtin_memcpy(bytes + offset, &value, 8);
    }
    for (; offset < to; offset++) bytes[offset] = pattern_byte(id, offset);
    add(C_BYTES_CHECKED, to - from);
}

/* The first offset below `length` not holding the pattern, or `length`. */
static size_t first_mismatch(const unsigned char *bytes, size_t length, uint64_t id) {
    size_t offset = 0;
    for (; offset + 8 <= length; offset += 8) {
        uint64_t value = word(id, offset / 8), found;
        __builtin_memcpy(&found, bytes + offset, 8);
        if (found != value) break;
    }
    for (; offset < length; offset++)
        if (bytes[offset] != pattern_byte(id, offset)) return offset;
    return length;
}

/* ---- Blocks ---- */

enum { BY_MALLOC, BY_CALLOC, BY_REALLOCARRAY, BY_POSIX_MEMALIGN, BY_ALIGNED_ALLOC, BY_MEMALIGN, BY_VALLOC };
static const char *const made_by[] = {"malloc", "calloc", "reallocarray", "posix_memalign",
                                      "aligned_alloc", "memalign", "valloc", "realloc"};

struct block {
    unsigned char *bytes;
    size_t size;
    size_t align;       /* the alignment the last call promised */
    uint64_t id;
    uint32_t origin;    /* the thread that allocated (or last reallocated) it */
    uint8_t owner_exited;
    uint8_t how;        /* index in made_by */
};

static atomic_ullong next_id = 1;
static size_t page_size;

static void check_prefix(const struct block *block, size_t length, const char *when) {
    add(C_BYTES_CHECKED, length);
    size_t offset = first_mismatch(block->bytes, length, block->id);
    if (offset == length) return;
    size_t end = length < offset + 64 ? length : offset + 64, differing = 0;
    for (size_t i = offset; i < end; i++) differing += block->bytes[i] != pattern_byte(block->id, i);
    fail("block %llu (%zu bytes from %s, aligned to %zu, at %p, from thread %u) corrupted %s: byte %zu is 0x%02x, "
         "expected 0x%02x (%zu of the %zu bytes from there differ)",
         (unsigned long long)block->id, block->size, made_by[block->how], block->align, (void *)block->bytes, block->origin,
         when, offset, block->bytes[offset], pattern_byte(block->id, offset), differing, end - offset);
}

static void check(const struct block *block, const char *when) { check_prefix(block, block->size, when); }

/* The alignment malloc promises for `size` bytes: 16 from 16 bytes on, 8 below. */
static size_t default_align(size_t size) { return size >= 16 ? 16 : 8; }

/* Picks `count` and `each` with count * each == size, for calloc and reallocarray. */
static void split(rng_t *rng, size_t size, size_t *count, size_t *each) {
    switch (below(rng, 3)) {
    case 0: *count = size, *each = 1; break;
    case 1: *count = 1, *each = size; break;
    default:
        if (size % 8 == 0) *count = size / 8, *each = 8;
        else *count = size, *each = 1;
    }
}

/* Allocates `size` bytes with a function picked at random, checks alignment (and zeroes,
 * for calloc) and fills the block. */
static struct block block_new(rng_t *rng, size_t size, int any_function) {
    struct block block = {0};
    size_t pick = any_function ? below(rng, 100) : 0, align = 0, count, each;
    void *pointer = NULL;
    if (pick < 50) {
        pointer = malloc(size), block.how = BY_MALLOC, bump(C_MALLOC);
    } else if (pick < 65) {
        split(rng, size, &count, &each);
        pointer = calloc(count, each), block.how = BY_CALLOC, bump(C_CALLOC);
    } else if (pick < 74) {
        split(rng, size, &count, &each);
        pointer = reallocarray(NULL, count, each), block.how = BY_REALLOCARRAY, bump(C_REALLOCARRAY);
    } else if (pick < 83) {
        align = sizeof(void *) << below(rng, 19); /* 8 B .. 2 MiB */
        int error = posix_memalign(&pointer, align, size);
        if (error != 0) fail("posix_memalign(%zu, %zu) returned %d", align, size, error);
        block.how = BY_POSIX_MEMALIGN, bump(C_POSIX_MEMALIGN);
    } else if (pick < 90) {
        align = (size_t)1 << below(rng, 22); /* 1 B .. 2 MiB */
        pointer = aligned_alloc(align, size), block.how = BY_ALIGNED_ALLOC, bump(C_ALIGNED_ALLOC);
    } else if (pick < 96) {
        align = (size_t)1 << below(rng, 22);
        pointer = memalign(align, size), block.how = BY_MEMALIGN, bump(C_MEMALIGN);
    } else {
        align = page_size;
        pointer = valloc(size), block.how = BY_VALLOC, bump(C_VALLOC);
    }
    if (pointer == NULL) fail("%s of %zu bytes (alignment %zu) returned NULL, errno %d", made_by[block.how], size, align, errno);
    if (align < default_align(size)) align = default_align(size);
    if ((uintptr_t)pointer % align != 0)
        fail("%s of %zu bytes returned %p, not aligned to %zu", made_by[block.how], size, pointer, align);
    if (align >= 4096) bump(C_BIG_ALIGN);
    block.bytes = pointer, block.size = size, block.align = align;
    block.id = atomic_fetch_add(&next_id, 1), block.origin = my_serial();
    if (block.how == BY_CALLOC) {
        for (size_t i = 0; i < size; i++)
            if (block.bytes[i] != 0) fail("calloc of %zu bytes at %p: byte %zu is 0x%02x, not zero", size, pointer, i, block.bytes[i]);
    }
    fill(block.bytes, 0, size, block.id);
    return block;
}

static void count_handover(const struct block *block) {
    if (block->origin != my_serial()) bump(C_CROSS_THREAD);
    if (block->owner_exited) bump(C_AFTER_OWNER_EXIT);
}

/* Resizes with realloc or reallocarray: checks before, checks the preserved prefix after,
 * fills the new bytes. */
static void block_realloc(rng_t *rng, struct block *block, size_t new_size) {
    check(block, "before realloc");
    count_handover(block);
    size_t old_size = block->size, count = new_size, each = 1;
    void *old = block->bytes, *pointer;
    int by_array = rng != NULL && percent(rng, 30);
    if (by_array) {
        split(rng, new_size, &count, &each);
        pointer = reallocarray(old, count, each), bump(C_REALLOCARRAY);
    } else {
        pointer = realloc(old, new_size), bump(C_REALLOC);
    }
    if (pointer == NULL) fail("%s of %zu bytes at %p to %zu returned NULL, errno %d", by_array ? "reallocarray" : "realloc", old_size, old, new_size, errno);
    if ((uintptr_t)pointer % default_align(new_size) != 0)
        fail("realloc to %zu bytes returned %p, misaligned", new_size, pointer);
    if (old_size >= 2 * MIB && new_size >= 2 * MIB) bump(C_HUGE_REALLOC);
    block->bytes = pointer, block->size = new_size, block->align = default_align(new_size);
    block->origin = my_serial(), block->owner_exited = 0, block->how = 7;
    size_t kept = old_size < new_size ? old_size : new_size;
    char when[160];
    snprintf(when, sizeof when, "by %s from %zu bytes at %p to %zu (preserved prefix of %zu bytes)",
             by_array ? "reallocarray" : "realloc", old_size, old, new_size, kept);
    check_prefix(block, kept, when);
    fill(block->bytes, kept, new_size, block->id);
}

/* Checks and frees the block (now and then with realloc(p, 0), which frees and returns NULL). */
static void block_free(rng_t *rng, struct block *block) {
    check(block, "before free");
    count_handover(block);
    if (rng != NULL && below(rng, 50) == 0) {
        errno = 0;
        void *result = realloc(block->bytes, 0);
        bump(C_REALLOC);
        if (result != NULL) fail("realloc(%p, 0) returned %p, not NULL", (void *)block->bytes, result);
    } else {
        free(block->bytes);
    }
    bump(C_FREE);
    block->bytes = NULL;
}

/* malloc_usable_size: at least the size; the bytes beyond the size are writable (filled and
 * checked here; a neighbour's check would see them if they overlapped it). */
static void block_usable(struct block *block) {
    size_t usable = malloc_usable_size(block->bytes);
    bump(C_USABLE_SIZE);
    if (usable < block->size)
        fail("malloc_usable_size(%p) is %zu for a block of %zu bytes", (void *)block->bytes, usable, block->size);
    if (usable - block->size > 4 * MIB)
        fail("malloc_usable_size(%p) is %zu for a block of %zu bytes (too much slack)", (void *)block->bytes, usable, block->size);
    fill(block->bytes, block->size, usable, block->id);
    struct block whole = *block;
    whole.size = usable;
    check(&whole, "after filling its usable size");
}

/* ---- What the threads share ---- */

static struct {
    pthread_mutex_t lock;
    int full;
    struct block block;
} exchange[EXCHANGE];

static pthread_mutex_t orphans_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block *orphans;
static size_t orphan_count, orphan_capacity;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block queue[QUEUE_CAPACITY];
static size_t queue_head, queue_length;

static void lock(pthread_mutex_t *mutex) {
    if (pthread_mutex_lock(mutex) != 0) fail("pthread_mutex_lock failed");
}
static void unlock(pthread_mutex_t *mutex) { pthread_mutex_unlock(mutex); }

/* Puts `block` into a random exchange slot; returns 1 with what was there in *block. */
static int swap_exchange(rng_t *rng, struct block *block) {
    size_t slot = below(rng, EXCHANGE);
    lock(&exchange[slot].lock);
    struct block previous = exchange[slot].block;
    int had = exchange[slot].full;
    exchange[slot].block = *block, exchange[slot].full = 1;
    unlock(&exchange[slot].lock);
    *block = previous;
    return had;
}

static void add_orphan(struct block block) {
    if (orphan_count == orphan_capacity) {
        orphan_capacity = orphan_capacity ? orphan_capacity * 2 : 1024;
        orphans = realloc(orphans, orphan_capacity * sizeof *orphans);
        if (orphans == NULL) fail("cannot grow the orphan pool");
    }
    orphans[orphan_count++] = block;
}

/* ---- Scenario threads ---- */

static atomic_int finished;

static void name_thread(const char *format, unsigned long long number) {
    snprintf(thread_name, sizeof thread_name, format, number);
}

static void *mix_worker(void *argument) {
    size_t index = (size_t)(uintptr_t)argument;
    name_thread("mix-%llu", index);
    rng_t rng = rng_new(1000 + index);
    struct block slots[SLOTS] = {0};
    size_t live = 0;
    for (unsigned long long operations = 1; !stopping(); operations++) {
        beat(MIX);
        if (inject_fault && index == 0 && operations == 2000) {
            for (int i = 0; i < SLOTS; i++)
                if (slots[i].bytes != NULL) {
                    slots[i].bytes[slots[i].size / 2] ^= 0x5A;
                    break;
                }
        }
        struct block *block = &slots[below(&rng, SLOTS)];
        if (block->bytes == NULL) {
            size_t size = random_size(&rng);
            if (live + size <= WORKER_BUDGET) *block = block_new(&rng, size, 1), live += size;
            continue;
        }
        size_t pick = below(&rng, 100);
        if (pick < 33) {
            live -= block->size;
            block_free(&rng, block);
        } else if (pick < 55) {
            size_t new_size = random_size(&rng);
            live -= block->size;
            if (live + new_size <= WORKER_BUDGET) block_realloc(&rng, block, new_size), live += new_size;
            else block_free(&rng, block);
        } else if (pick < 70) {
            live -= block->size;
            if (swap_exchange(&rng, block)) live += block->size;
            else block->bytes = NULL;
        } else if (pick < 75) {
            struct block taken[16];
            size_t count = 0;
            lock(&orphans_lock);
            while (count < 16 && orphan_count > 0) taken[count++] = orphans[--orphan_count];
            unlock(&orphans_lock);
            for (size_t i = 0; i < count; i++) block_free(&rng, &taken[i]);
        } else if (pick < 85) {
            block_usable(block);
        } else {
            check(block, "while live");
        }
    }
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].bytes != NULL) block_free(NULL, &slots[i]);
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static void *trimmer(void *argument) {
    (void)argument;
    name_thread("trimmer", 0);
    while (!stopping()) {
        malloc_trim(0);
        bump(C_TRIM);
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    atomic_fetch_add(&finished, 1);
    return NULL;
}

/* What a short-lived thread leaves live for others. */
struct leftovers {
    uint64_t stream;
    struct block *blocks;
    size_t count;
};

static void *short_lived(void *argument) {
    struct leftovers *left = argument;
    name_thread("short-%llu", left->stream);
    rng_t rng = rng_new(left->stream);
    size_t capacity = 1200, count = 0;
    struct block *blocks = malloc(capacity * sizeof *blocks);
    if (blocks == NULL) fail("malloc of the block list failed");
    size_t steps = 100 + below(&rng, 1000);
    for (size_t step = 0; step < steps; step++) {
        size_t pick = below(&rng, 10);
        if (pick < 6 || count == 0) {
            size_t size = percent(&rng, 10) ? random_size(&rng) : size_up_to(&rng, 10);
            blocks[count++] = block_new(&rng, size, 1);
        } else if (pick == 6) {
            block_realloc(&rng, &blocks[below(&rng, count)], size_up_to(&rng, 14));
        } else if (pick == 7) {
            size_t index = below(&rng, count);
            struct block block = blocks[index];
            blocks[index] = blocks[--count];
            if (swap_exchange(&rng, &block)) blocks[count++] = block;
        } else {
            size_t index = below(&rng, count);
            block_free(&rng, &blocks[index]);
            blocks[index] = blocks[--count];
        }
    }
    size_t keep = count / 2;
    for (size_t i = keep; i < count; i++) block_free(&rng, &blocks[i]);
    left->blocks = blocks, left->count = keep;
    return NULL;
}

static void *churn_spawner(void *argument) {
    (void)argument;
    name_thread("churn-spawner", 0);
    rng_t rng = rng_new(2000);
    for (uint64_t round = 0; !stopping(); round++) {
        beat(CHURN);
        pthread_t threads[4];
        struct leftovers left[4];
        for (int i = 0; i < 4; i++) {
            left[i] = (struct leftovers){.stream = 3000 + round * 4 + (uint64_t)i};
            if (pthread_create(&threads[i], NULL, short_lived, &left[i]) != 0) fail("pthread_create failed");
            bump(C_SHORT_THREADS);
        }
        for (int i = 0; i < 4; i++) {
            if (pthread_join(threads[i], NULL) != 0) fail("pthread_join failed");
            lock(&orphans_lock);
            for (size_t j = 0; j < left[i].count; j++) {
                left[i].blocks[j].owner_exited = 1;
                add_orphan(left[i].blocks[j]);
            }
            free(left[i].blocks);
            /* Beyond the limit, free a random stretch here (after the owner exited too). */
            struct block *freed = NULL;
            size_t freed_count = 0;
            if (orphan_count > ORPHAN_LIMIT) {
                size_t from = below(&rng, orphan_count - ORPHAN_LIMIT / 2);
                freed_count = ORPHAN_LIMIT / 2;
                freed = malloc(freed_count * sizeof *freed);
                if (freed == NULL) fail("malloc failed");
                memcpy(freed, orphans + from, freed_count * sizeof *freed);
                memmove(orphans + from, orphans + from + freed_count, (orphan_count - from - freed_count) * sizeof *freed);
                orphan_count -= freed_count;
            }
            unlock(&orphans_lock);
            for (size_t j = 0; j < freed_count; j++) block_free(&rng, &freed[j]);
            free(freed);
        }
    }
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static void queue_push(struct block *blocks, size_t count) {
    for (;;) {
        lock(&queue_lock);
        if (queue_length + count <= QUEUE_CAPACITY && (queue_length <= QUEUE_LIMIT || stopping())) break;
        unlock(&queue_lock);
        if (stopping() && count > QUEUE_CAPACITY) fail("queue overflow");
        nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
    }
    for (size_t i = 0; i < count; i++) queue[(queue_head + queue_length++) % QUEUE_CAPACITY] = blocks[i];
    unlock(&queue_lock);
}

/* A producer: 64-byte blocks, queued in batches or all at the end; exits with them live. */
static void *produce(void *argument) {
    uint64_t stream = (uint64_t)(uintptr_t)argument;
    name_thread("producer-%llu", stream);
    rng_t rng = rng_new(stream);
    size_t count = 256 + below(&rng, 4096), batch = percent(&rng, 50) ? count : 32, pending = 0;
    struct block *blocks = malloc(count * sizeof *blocks);
    if (blocks == NULL) fail("malloc of the block list failed");
    for (size_t i = 0; i < count; i++) {
        blocks[pending++] = block_new(&rng, 64, percent(&rng, 20));
        if (pending == batch) queue_push(blocks, pending), pending = 0;
    }
    queue_push(blocks, pending);
    free(blocks);
    return NULL;
}

static void *producer_spawner(void *argument) {
    (void)argument;
    name_thread("producer-spawner", 0);
    for (uint64_t round = 0; !stopping(); round++) {
        beat(ADOPT);
        pthread_t threads[2];
        for (int i = 0; i < 2; i++) {
            if (pthread_create(&threads[i], NULL, produce, (void *)(uintptr_t)(5000000 + round * 2 + (uint64_t)i)) != 0)
                fail("pthread_create failed");
            bump(C_SHORT_THREADS);
        }
        for (int i = 0; i < 2; i++)
            if (pthread_join(threads[i], NULL) != 0) fail("pthread_join failed");
    }
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static void *consumer(void *argument) {
    name_thread("consumer-%llu", (uintptr_t)argument);
    while (!stopping()) {
        struct block batch[64];
        size_t count = 0;
        lock(&queue_lock);
        while (count < 64 && queue_length > 0) {
            batch[count++] = queue[queue_head];
            queue_head = (queue_head + 1) % QUEUE_CAPACITY, queue_length--;
        }
        unlock(&queue_lock);
        if (count == 0) sched_yield();
        for (size_t i = 0; i < count; i++) block_free(NULL, &batch[i]), bump(C_PRODUCED_CONSUMED);
    }
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static void *steady_64(void *argument) {
    (void)argument;
    name_thread("steady-64", 0);
    rng_t rng = rng_new(4000);
    static struct block ring[1024];
    while (!stopping()) {
        beat(ADOPT);
        struct block *block = &ring[below(&rng, 1024)];
        if (block->bytes != NULL) block_free(NULL, block);
        *block = block_new(&rng, 64, 0);
    }
    for (int i = 0; i < 1024; i++)
        if (ring[i].bytes != NULL) block_free(NULL, &ring[i]);
    atomic_fetch_add(&finished, 1);
    return NULL;
}

/* Resizes a block between `low` and `high` MiB, every fourth round via 2 to 32 MiB. */
static void *huge_realloc(void *argument) {
    size_t low = (size_t)(uintptr_t)argument, high = low == 16 ? 24 : 10;
    name_thread("huge-realloc-%llu", low);
    rng_t rng = rng_new(6000 + low);
    struct block block = block_new(&rng, low * MIB, 0);
    for (uint64_t round = 0; !stopping(); round++) {
        beat(HUGE);
        block_realloc(NULL, &block, high * MIB);
        block_realloc(NULL, &block, low * MIB);
        if (round % 4 == 3) {
            block_realloc(&rng, &block, 2 * MIB + below(&rng, 30 * MIB));
            block_realloc(NULL, &block, low * MIB);
        }
    }
    block_free(NULL, &block);
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static void *alloc_free_loop(void *argument) {
    size_t size = (size_t)(uintptr_t)argument;
    name_thread("alloc-%llu", size);
    rng_t rng = rng_new(7000 + size);
    struct block older = block_new(&rng, size, 0);
    while (!stopping()) {
        beat(HUGE);
        struct block newer = block_new(&rng, size, 0);
        block_free(NULL, &older);
        older = newer;
    }
    block_free(NULL, &older);
    atomic_fetch_add(&finished, 1);
    return NULL;
}

/* ---- Main: options, start, watchdog, stop, drain ---- */

static pthread_t threads[64];
static int thread_count;

static void start(void *(*function)(void *), void *argument) {
    if (thread_count == 64) fail("too many threads");
    if (pthread_create(&threads[thread_count++], NULL, function, argument) != 0) fail("pthread_create failed");
}

static void usage(const char *message) {
    fprintf(stderr, "torture-c: %s\nusage: torture [--seed N] [--seconds S] [--threads N] "
                    "[--scenarios mix,churn,adopt,huge] [--inject-fault]\n", message);
    exit(2);
}

int main(int argc, char **argv) {
    double seconds = 20;
    long workers = 4;
    int enabled[SCENARIOS] = {1, 1, 1, 1};
    struct timespec clock_now;
    clock_gettime(CLOCK_REALTIME, &clock_now);
    run_seed = (uint64_t)clock_now.tv_nsec ^ ((uint64_t)clock_now.tv_sec << 20) ^ (uint64_t)getpid();
    for (int i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(argv[i], "--inject-fault") == 0) {
            inject_fault = 1;
            continue;
        }
        if (value == NULL) usage("missing value");
        i++;
        if (strcmp(argv[i - 1], "--seed") == 0) {
            run_seed = strtoull(value, &end, 0);
        } else if (strcmp(argv[i - 1], "--seconds") == 0) {
            seconds = strtod(value, &end);
        } else if (strcmp(argv[i - 1], "--threads") == 0) {
            workers = strtol(value, &end, 0);
            if (workers < 1 || workers > 32) usage("--threads must be 1 to 32");
        } else if (strcmp(argv[i - 1], "--scenarios") == 0) {
            memset(enabled, 0, sizeof enabled);
            char names[256];
            snprintf(names, sizeof names, "%s", value);
            for (char *save = NULL, *name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
                int found = 0;
                for (int s = 0; s < SCENARIOS; s++)
                    if (strcmp(name, scenario_names[s]) == 0) enabled[s] = found = 1;
                if (!found) usage("unknown scenario");
            }
            end = (char *)value + strlen(value);
        } else {
            usage("unknown argument");
        }
        if (end == NULL || *end != '\0') usage("bad value");
    }
    clock_gettime(CLOCK_MONOTONIC, &run_start);
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < EXCHANGE; i++) pthread_mutex_init(&exchange[i].lock, NULL);
    fprintf(stderr, "torture-c: seed %llu seconds %g threads %ld scenarios%s%s%s%s%s\n", (unsigned long long)run_seed,
            seconds, workers, enabled[MIX] ? " mix" : "", enabled[CHURN] ? " churn" : "", enabled[ADOPT] ? " adopt" : "",
            enabled[HUGE] ? " huge" : "", inject_fault ? " (injecting a fault)" : "");

    if (enabled[MIX]) {
        for (long i = 0; i < workers; i++) start(mix_worker, (void *)(uintptr_t)i);
        start(trimmer, NULL);
    }
    if (enabled[CHURN]) start(churn_spawner, NULL);
    if (enabled[ADOPT]) {
        start(producer_spawner, NULL);
        start(consumer, (void *)0);
        start(consumer, (void *)1);
        start(steady_64, NULL);
    }
    if (enabled[HUGE]) {
        start(huge_realloc, (void *)(uintptr_t)16);
        start(huge_realloc, (void *)(uintptr_t)6);
        start(alloc_free_loop, (void *)(uintptr_t)(4 * MIB));
        start(alloc_free_loop, (void *)(uintptr_t)(600 * 1024));
        start(trimmer, NULL); /* cached chunks back to the system while blocks move */
    }

    unsigned long long seen[SCENARIOS] = {0};
    double since[SCENARIOS] = {0}, next_report = 60;
    while (elapsed() < seconds) {
        nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
        double now = elapsed();
        for (int s = 0; s < SCENARIOS; s++) {
            if (!enabled[s]) continue;
            unsigned long long beats = atomic_load(&progress[s]);
            if (beats != seen[s]) seen[s] = beats, since[s] = now;
            else if (now - since[s] > STALL_LIMIT)
                fail("scenario %s made no progress for %d s (a deadlock?)", scenario_names[s], STALL_LIMIT);
        }
        if (now >= next_report) {
            fprintf(stderr, "torture-c: %.0f s: malloc=%llu free=%llu realloc=%llu\n", now,
                    (unsigned long long)counters[C_MALLOC], (unsigned long long)counters[C_FREE],
                    (unsigned long long)counters[C_REALLOC]);
            next_report += 60;
        }
    }
    atomic_store(&stop_flag, 1);
    double stopping_at = elapsed();
    while (atomic_load(&finished) < thread_count) {
        if (elapsed() - stopping_at > 120) fail("threads still running 120 s after the stop (a deadlock?)");
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    for (int i = 0; i < thread_count; i++)
        if (pthread_join(threads[i], NULL) != 0) fail("pthread_join failed");

    for (int i = 0; i < EXCHANGE; i++)
        if (exchange[i].full) block_free(NULL, &exchange[i].block);
    for (size_t i = 0; i < orphan_count; i++) block_free(NULL, &orphans[i]);
    free(orphans);
    for (size_t i = 0; i < queue_length; i++) block_free(NULL, &queue[(queue_head + i) % QUEUE_CAPACITY]);
    malloc_trim(0);
    bump(C_TRIM);

    printf("torture-c: ok seed=%llu seconds=%.1f", (unsigned long long)run_seed, elapsed());
    for (int i = 0; i < COUNTERS; i++) printf(" %s=%llu", counter_names[i], (unsigned long long)counters[i]);
    printf("\n");
    return 0;
}
