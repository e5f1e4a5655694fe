/* The contract of each C allocation function, one subcommand per function: results,
 * alignment, usable size, contents kept, zeroing, and the failures (NULL with ENOMEM or
 * EINVAL, overflow checks). Prints "ok" and exits 0 when every check holds. */
#define _GNU_SOURCE
#include <malloc.h>
#include <unistd.h>

#include "check.h"

#define MIB ((size_t)1 << 20)

static const size_t sizes[] = {
    0,     1,     7,     8,     9,     15,        16,          17,      20,       24,
    28,    31,    32,    33,    40,    48,        56,          63,      64,       100,
    255,   256,   1000,  4095,  4096,  4097,      8191,        32767,   32768,    32769,
    65536, 100000, MIB,  MIB + 1, 2 * MIB, 2 * MIB + 1, 5 * MIB + 3,
};
#define SIZE_COUNT (sizeof sizes / sizeof sizes[0])

/* What malloc promises a block of `size` bytes: alignof(max_align_t) from 16 bytes, else 8. */
static size_t natural_alignment(size_t size) { return size >= 16 ? 16 : 8; }

static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

/* Whether the kernel refuses a mapping larger than all memory (overcommit mode 0 or 2; in
 * mode 1 it hands out any amount of address space). */
static int kernel_refuses_huge_mappings(void) {
    FILE *file = fopen("/proc/sys/vm/overcommit_memory", "r");
    int mode = 0;
    if (file != NULL) {
        if (fscanf(file, "%d", &mode) != 1) mode = 0;
        fclose(file);
    }
    return mode != 1;
}

/* 64 TiB: more than any test machine has, but a size the allocator asks the kernel for. */
#define TOO_MUCH ((size_t)1 << 46)

static void check_block(void *block, size_t size, size_t alignment) {
    CHECK(block != NULL);
    CHECK(ALIGNED(block, alignment));
    CHECK(malloc_usable_size(block) >= size);
}

static void test_malloc(void) {
    void *blocks[SIZE_COUNT];
    for (size_t i = 0; i < SIZE_COUNT; i++) {
        blocks[i] = malloc(sizes[i]);
        check_block(blocks[i], sizes[i], natural_alignment(sizes[i]));
        fill(blocks[i], sizes[i], i);
    }
    for (size_t i = 0; i < SIZE_COUNT; i++) CHECK(intact(blocks[i], sizes[i], i));
    for (size_t i = 0; i < SIZE_COUNT; i++) free(blocks[i]);

    /* Every size up to 4 KiB gets the alignment it needs, live side by side. */
    static void *many[4097];
    for (size_t size = 0; size <= 4096; size++) {
        many[size] = malloc(size);
        check_block(many[size], size, natural_alignment(size));
        fill(many[size], size, size);
    }
    for (size_t size = 0; size <= 4096; size++) {
        CHECK(intact(many[size], size, size));
        free(many[size]);
    }

    /* malloc(0): unique, freeable pointers. */
    void *zero_a = malloc(0), *zero_b = malloc(0);
    CHECK(zero_a != NULL && zero_b != NULL && zero_a != zero_b);
    free(zero_a);
    free(zero_b);

    /* Impossible sizes: NULL with ENOMEM, and the allocator still works afterwards. */
    errno = 0;
    CHECK(malloc(size_max_v) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(ptrdiff_max_v + 1) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(ptrdiff_max_v) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(ptrdiff_max_v / 2) == NULL && errno == ENOMEM);
    if (kernel_refuses_huge_mappings()) {
        /* The kernel says no: NULL with ENOMEM, and nothing is left half-done. */
        errno = 0;
        CHECK(malloc(hide(TOO_MUCH)) == NULL && errno == ENOMEM);
        errno = 0;
        CHECK(calloc(hide(TOO_MUCH), 1) == NULL && errno == ENOMEM);
    }
    void *after = malloc(100);
    check_block(after, 100, 16);
    free(after);
}

static void test_free(void) {
    /* free(NULL) does nothing and keeps errno. */
    errno = 1234;
    free(NULL);
    CHECK(errno == 1234);
    /* free keeps errno for every kind of block (small, large, huge). */
    for (size_t i = 0; i < SIZE_COUNT; i++) {
        void *block = malloc(sizes[i]);
        CHECK(block != NULL);
        errno = 4321;
        free(block);
        CHECK(errno == 4321);
    }
    /* Blocks freed in every order are reused without overlap. */
    enum { COUNT = 2000 };
    static void *blocks[COUNT];
    uint64_t state = 88172645463325252u;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < COUNT; i++) {
            size_t size = 1 + next_random(&state) % 3000;
            blocks[i] = malloc(size);
            CHECK(blocks[i] != NULL);
            fill(blocks[i], 8, (uintptr_t)blocks[i]);
        }
        for (int i = 0; i < COUNT; i++) {
            int j = (int)(next_random(&state) % COUNT);
            void *swap = blocks[i];
            blocks[i] = blocks[j];
            blocks[j] = swap;
        }
        for (int i = 0; i < COUNT; i++) {
            CHECK(intact(blocks[i], 8, (uintptr_t)blocks[i]));
            free(blocks[i]);
        }
    }
}

static void test_calloc(void) {
    for (size_t i = 0; i < SIZE_COUNT; i++) {
        size_t size = sizes[i];
        /* Dirty a block of the same size first, so a reused block must be cleared. */
        void *dirty = malloc(size);
        CHECK(dirty != NULL);
        memset(dirty, 0xAB, size);
        free(dirty);
        unsigned char *block = calloc(1, size);
        check_block(block, size, natural_alignment(size));
        for (size_t j = 0; j < size; j++) CHECK(block[j] == 0);
        free(block);
        if (size > 0 && size % 4 == 0) {
            unsigned int *array = calloc(size / 4, 4);
            check_block(array, size, natural_alignment(size));
            for (size_t j = 0; j < size / 4; j++) CHECK(array[j] == 0);
            free(array);
        }
    }
    void *empty = calloc(0, 0), *empty_count = calloc(0, 8), *empty_size = calloc(8, 0);
    CHECK(empty != NULL && empty_count != NULL && empty_size != NULL);
    free(empty);
    free(empty_count);
    free(empty_size);

    /* Overflowing products: NULL with ENOMEM. */
    errno = 0;
    CHECK(calloc(size_max_v, 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(size_max_v / 2 + 1, 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(hide((size_t)1 << 33), (size_t)1 << 33) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(2, size_max_v / 2 + 1) == NULL && errno == ENOMEM);
    /* No overflow but too big. */
    errno = 0;
    CHECK(calloc(1, size_max_v) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(ptrdiff_max_v / 16, 8) == NULL && errno == ENOMEM);
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n), also for n = 0. */
    void *fresh = realloc(NULL, 100);
    check_block(fresh, 100, 16);
    free(fresh);
    void *zero = realloc(NULL, 0);
    CHECK(zero != NULL);
    free(zero);

    /* Growth and shrinking through every path keep the contents. */
    static const size_t steps[] = {10,      24,      100,     1000,    40000,   300000, 3 * MIB,
                                   10 * MIB, 4 * MIB, 500000,  33000,   32000,   50,     5,
                                   7 * MIB, 16,      2 * MIB, 1,       MIB,     64};
    size_t size = steps[0];
    unsigned char *block = malloc(size);
    CHECK(block != NULL);
    fill(block, size, 7);
    for (size_t i = 1; i < sizeof steps / sizeof steps[0]; i++) {
        size_t new_size = steps[i];
        size_t kept = size < new_size ? size : new_size;
        block = realloc(block, new_size);
        check_block(block, new_size, natural_alignment(new_size));
        CHECK(intact(block, kept, 7));
        fill(block, new_size, 7);
        size = new_size;
    }

    /* A failed realloc returns NULL with ENOMEM and leaves the block as it was. */
    errno = 0;
    CHECK(realloc(block, size_max_v) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(block, ptrdiff_max_v) == NULL && errno == ENOMEM);
    CHECK(intact(block, size, 7));
    CHECK(malloc_usable_size(block) >= size);

    /* realloc(p, 0) frees p and returns NULL, as glibc does. */
    CHECK(realloc(block, 0) == NULL);

    /* memalign honours alignments malloc does not give small sizes (glibc's 16 for 1 byte). */
    for (size_t alignment = 1; alignment <= 64; alignment *= 2) {
        for (size_t n = 1; n <= 40; n += 3) {
            void *small = memalign(alignment, n);
            CHECK(small != NULL && (uintptr_t)small % alignment == 0);
            free(small);
        }
    }

    /* A block with a large alignment may move to one with malloc's alignment. */
    void *aligned = memalign(4096, 100);
    CHECK(aligned != NULL);
    fill(aligned, 100, 9);
    unsigned char *moved = realloc(aligned, 5000);
    check_block(moved, 5000, 16);
    CHECK(intact(moved, 100, 9));
    free(moved);

    /* Many small in-place and moving steps. */
    unsigned char *grow = NULL;
    for (size_t n = 1; n <= 70000; n += n / 8 + 1) {
        grow = realloc(grow, n);
        check_block(grow, n, natural_alignment(n));
        grow[n - 1] = (unsigned char)n;
        grow[0] = 0x5A;
        CHECK(grow[0] == 0x5A);
    }
    free(grow);
}

static void test_reallocarray(void) {
    unsigned char *array = reallocarray(NULL, 10, 10);
    check_block(array, 100, 16);
    fill(array, 100, 3);
    array = reallocarray(array, 300, 10);
    check_block(array, 3000, 16);
    CHECK(intact(array, 100, 3));

    /* Overflowing products fail with ENOMEM and leave the block alone. */
    errno = 0;
    CHECK(reallocarray(array, size_max_v / 2 + 1, 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(array, hide((size_t)1 << 40), (size_t)1 << 40) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, size_max_v, size_max_v) == NULL && errno == ENOMEM);
    CHECK(intact(array, 100, 3));
    /* Too big without overflow. */
    errno = 0;
    CHECK(reallocarray(array, 1, size_max_v) == NULL && errno == ENOMEM);
    CHECK(intact(array, 100, 3));
    /* A zero product is realloc(p, 0): the block is freed and NULL returned (glibc). */
    CHECK(reallocarray(array, 0, 10) == NULL);
}

static void test_posix_memalign(void) {
    static const size_t request_sizes[] = {0, 1, 24, 100, 4096, 50000, 3 * MIB};
    for (size_t alignment = sizeof(void *); alignment <= ((size_t)1 << 23); alignment *= 2) {
        for (size_t i = 0; i < sizeof request_sizes / sizeof request_sizes[0]; i++) {
            void *block = NULL;
            CHECK(posix_memalign(&block, alignment, request_sizes[i]) == 0);
            check_block(block, request_sizes[i], alignment);
            size_t natural = natural_alignment(request_sizes[i]);
            CHECK(ALIGNED(block, natural));
            fill(block, request_sizes[i], alignment);
            CHECK(intact(block, request_sizes[i], alignment));
            free(block);
        }
    }
    /* An alignment beyond a chunk. */
    void *big = NULL;
    CHECK(posix_memalign(&big, (size_t)1 << 26, 1000) == 0);
    check_block(big, 1000, (size_t)1 << 26);
    free(big);

    /* Bad alignments: EINVAL, *memptr untouched, errno untouched. */
    static const size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 96, 1000, 4097};
    void *sentinel = (void *)&sentinel;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *block = sentinel;
        errno = 777;
        CHECK(posix_memalign(&block, bad[i], 64) == EINVAL);
        CHECK(block == sentinel);
        CHECK(errno == 777);
    }
    void *block = sentinel;
    errno = 777;
    CHECK(posix_memalign(&block, size_max_v, 64) == EINVAL && block == sentinel && errno == 777);

    /* Out of memory: ENOMEM returned, *memptr and errno untouched. */
    block = sentinel;
    errno = 777;
    CHECK(posix_memalign(&block, 64, size_max_v) == ENOMEM && block == sentinel);
    CHECK(posix_memalign(&block, 64, ptrdiff_max_v / 2) == ENOMEM && block == sentinel);
    CHECK(posix_memalign(&block, size_max_v / 2 + 1, 1) == ENOMEM && block == sentinel);
    if (kernel_refuses_huge_mappings()) {
        CHECK(posix_memalign(&block, 4096, hide(TOO_MUCH)) == ENOMEM && block == sentinel);
    }
    CHECK(errno == 777);
}

static void test_aligned_alloc(void) {
    static const size_t request_sizes[] = {0, 1, 8, 24, 100, 4096, 50000, 3 * MIB};
    for (size_t alignment = 1; alignment <= ((size_t)1 << 22); alignment *= 2) {
        for (size_t i = 0; i < sizeof request_sizes / sizeof request_sizes[0]; i++) {
            size_t size = request_sizes[i];
            void *block = aligned_alloc(alignment, size);
            size_t wanted = alignment > natural_alignment(size) ? alignment : natural_alignment(size);
            check_block(block, size, wanted);
            fill(block, size, i);
            CHECK(intact(block, size, i));
            free(block);
        }
    }
    /* Alignments that are not powers of two: NULL with EINVAL (as glibc 2.38 and later). */
    static const size_t bad[] = {0, 3, 12, 24, 48, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK(aligned_alloc(bad[i], 96) == NULL && errno == EINVAL);
    }
    errno = 0;
    CHECK(aligned_alloc(64, size_max_v) == NULL && errno == ENOMEM);
}

static void test_memalign(void) {
    void *block = memalign(0, 100);
    check_block(block, 100, 16);
    free(block);
    block = memalign(1, 10);
    check_block(block, 10, 8);
    free(block);
    /* Not a power of two: rounded up to the next one. */
    block = memalign(24, 100);
    check_block(block, 100, 32);
    free(block);
    block = memalign(3000, 10);
    check_block(block, 10, 4096);
    free(block);
    for (size_t alignment = 32; alignment <= ((size_t)1 << 22); alignment *= 2) {
        block = memalign(alignment, 77);
        check_block(block, 77, alignment);
        fill(block, 77, alignment);
        CHECK(intact(block, 77, alignment));
        free(block);
    }
    /* An alignment above SIZE_MAX / 2 + 1: EINVAL. */
    errno = 0;
    CHECK(memalign(size_max_v / 2 + 2, 1) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(size_max_v, 1) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(64, size_max_v) == NULL && errno == ENOMEM);
}

static void test_valloc(void) {
    static const size_t request_sizes[] = {0, 1, 100, 5000, 3 * MIB};
    for (size_t i = 0; i < sizeof request_sizes / sizeof request_sizes[0]; i++) {
        void *block = valloc(request_sizes[i]);
        check_block(block, request_sizes[i], page());
        fill(block, request_sizes[i], i);
        free(block);
    }
    errno = 0;
    CHECK(valloc(size_max_v) == NULL && errno == ENOMEM);
}

static void test_pvalloc(void) {
    static const size_t request_sizes[] = {0, 1, 100, 5000, 3 * MIB + 1};
    for (size_t i = 0; i < sizeof request_sizes / sizeof request_sizes[0]; i++) {
        size_t size = request_sizes[i];
        size_t rounded = (size + page() - 1) / page() * page();
        if (rounded == 0) rounded = page();
        void *block = pvalloc(size);
        check_block(block, rounded, page());
        fill(block, rounded, i);
        free(block);
    }
    /* Rounding up to a page overflows: ENOMEM. */
    errno = 0;
    CHECK(pvalloc(size_max_v) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(size_max_v - page() + 2) == NULL && errno == ENOMEM);
}

static void test_usable_size(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    /* The whole usable size of every block can be written without touching a neighbour. */
    enum { COUNT = 3000 };
    static void *blocks[COUNT];
    static size_t usable[COUNT];
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (int i = 0; i < COUNT; i++) {
        size_t size = i < 100 ? sizes[i % SIZE_COUNT] : next_random(&state) % 20000;
        blocks[i] = malloc(size);
        CHECK(blocks[i] != NULL);
        usable[i] = malloc_usable_size(blocks[i]);
        CHECK(usable[i] >= size);
        fill(blocks[i], usable[i], (uintptr_t)i);
    }
    for (int i = 0; i < COUNT; i++) {
        CHECK(intact(blocks[i], usable[i], (uintptr_t)i));
        CHECK(malloc_usable_size(blocks[i]) == usable[i]);
        free(blocks[i]);
    }
}

static void test_trim(void) {
    enum { COUNT = 4000 };
    static void *blocks[COUNT];
    for (int i = 0; i < COUNT; i++) CHECK((blocks[i] = malloc(i % 2 ? 3000 : 300000)) != NULL);
    for (int i = 0; i < COUNT; i++) free(blocks[i]);
    int released = malloc_trim(0);
    CHECK(released == 0 || released == 1);
    void *block = malloc(1000);
    check_block(block, 1000, 16);
    free(block);
}

/* Random malloc, calloc, realloc, aligned and free operations over a live set, each
 * block's contents checked before it changes. */
static void test_stress(void) {
    enum { SLOTS = 4096, OPERATIONS = 300000 };
    static unsigned char *blocks[SLOTS];
    static size_t lengths[SLOTS];
    uint64_t state = 0x2545F4914F6CDD1Du;
    for (int operation = 0; operation < OPERATIONS; operation++) {
        size_t slot = next_random(&state) % SLOTS;
        uint64_t choice = next_random(&state);
        /* Log-uniform sizes from 1 byte to 256 KiB, and now and then 3 MiB. */
        size_t size = choice % 1000 == 0 ? 3 * MIB : ((size_t)1 << (choice % 18)) + (choice >> 40) % 1000;
        unsigned char *block = blocks[slot];
        if (block != NULL) {
            CHECK(intact_sparse(block, lengths[slot], (uintptr_t)slot ^ lengths[slot]));
        }
        switch ((choice >> 20) % 5) {
        case 0:
            free(block);
            blocks[slot] = NULL;
            lengths[slot] = 0;
            continue;
        case 1: {
            unsigned char *moved = realloc(block, size);
            CHECK(moved != NULL);
            size_t kept = lengths[slot] < size ? lengths[slot] : size;
            uintptr_t seed = (uintptr_t)slot ^ lengths[slot];
            CHECK(intact_stride(moved, kept, seed));
            CHECK(kept < lengths[slot] || intact_sparse(moved, kept, seed));
            block = moved;
            break;
        }
        case 2:
            free(block);
            block = calloc(1, size);
            CHECK(block != NULL);
            for (size_t i = 0; i < size; i += 61) CHECK(block[i] == 0);
            break;
        case 3: {
            free(block);
            void *aligned = NULL;
            size_t alignment = (size_t)8 << ((choice >> 30) % 10);
            CHECK(posix_memalign(&aligned, alignment, size) == 0);
            CHECK(ALIGNED(aligned, alignment));
            block = aligned;
            break;
        }
        default:
            free(block);
            block = malloc(size);
            CHECK(block != NULL);
        }
        CHECK(ALIGNED(block, natural_alignment(size)));
        blocks[slot] = block;
        lengths[slot] = size;
        fill_sparse(block, size, (uintptr_t)slot ^ size);
    }
    for (int slot = 0; slot < SLOTS; slot++) {
        if (blocks[slot] != NULL) CHECK(intact_sparse(blocks[slot], lengths[slot], (uintptr_t)slot ^ lengths[slot]));
        free(blocks[slot]);
    }
}

static const struct {
    const char *name;
    void (*run)(void);
} tests[] = {
    {"malloc", test_malloc},
    {"free", test_free},
    {"calloc", test_calloc},
    {"realloc", test_realloc},
    {"reallocarray", test_reallocarray},
    {"posix_memalign", test_posix_memalign},
    {"aligned_alloc", test_aligned_alloc},
    {"memalign", test_memalign},
    {"valloc", test_valloc},
    {"pvalloc", test_pvalloc},
    {"malloc_usable_size", test_usable_size},
    {"malloc_trim", test_trim},
    {"stress", test_stress},
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
