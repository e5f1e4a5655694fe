/* Bad pointers handed to the allocator, one subcommand each. Every one must end in a clear
 * message on stderr and SIGABRT; reaching the end of a subcommand prints "survived" and
 * exits 0, which the test reports as a failure. */
#define _GNU_SOURCE
#include <malloc.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

/* glibc's own allocator, still present under LD_PRELOAD: memory this allocator never saw. */
extern void *__libc_malloc(size_t size);

static char static_bytes[256];

/* Hides a pointer's origin from the compiler, which warns about freeing non-heap objects. */
static void *launder(void *pointer) {
    void *volatile hidden = pointer;
    return hidden;
}

static void free_stack(void) {
    char bytes[64];
    bytes[0] = 1;
    free(launder(bytes + 16));
}

static void free_static(void) { free(launder(static_bytes)); }

static void free_mapping(void) {
    void *mapping = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mapping != MAP_FAILED);
    free(mapping);
}

/* A 2 MiB-aligned address in a mapping of ours: what a huge block of the allocator looks like. */
static void free_chunk_aligned(void) {
    size_t chunk = (size_t)2 << 20;
    unsigned char *mapping = mmap(NULL, 2 * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mapping != MAP_FAILED);
    uintptr_t aligned = ((uintptr_t)mapping + chunk - 1) & ~(uintptr_t)(chunk - 1);
    free((void *)aligned);
}

static void free_libc_block(void) {
    void *block = __libc_malloc(100);
    CHECK(block != NULL);
    free(block);
}

static void free_wild(void) { free(launder((void *)(uintptr_t)0x10)); }

static void realloc_foreign(void) {
    char bytes[64];
    bytes[0] = 1;
    void *moved = realloc(launder(bytes), 100);
    printf("%p\n", moved);
}

static void usable_size_foreign(void) { printf("%zu\n", malloc_usable_size(launder(static_bytes))); }

/* Checked builds only: a block freed twice, and a pointer into the middle of a block. */
static void double_free(void) {
    void *block = malloc(48);
    CHECK(block != NULL);
    free(block);
    free(launder(block));
}

static void free_interior(void) {
    char *block = malloc(100);
    CHECK(block != NULL);
    free(launder(block + 8));
}

/* A pointer into a huge block (8 MiB: whole chunks of its own), past its first byte: both
 * in its first chunk and at the start of a later one. Neither starts a block. */
static void free_into_huge(void) {
    char *block = malloc(8 << 20);
    CHECK(block != NULL);
    memset(block, 0x5A, 8 << 20);
    free(launder(block + 4096));
}

static void free_into_huge_tail(void) {
    char *block = malloc(8 << 20);
    CHECK(block != NULL);
    free(launder(block + (4 << 20)));
}

static const struct {
    const char *name;
    void (*run)(void);
} cases[] = {
    {"free-stack", free_stack},
    {"free-static", free_static},
    {"free-mapping", free_mapping},
    {"free-chunk-aligned", free_chunk_aligned},
    {"free-libc-block", free_libc_block},
    {"free-wild", free_wild},
    {"realloc-foreign", realloc_foreign},
    {"usable-size-foreign", usable_size_foreign},
    {"double-free", double_free},
    {"free-interior", free_interior},
    {"free-into-huge", free_into_huge},
    {"free-into-huge-tail", free_into_huge_tail},
};

int main(int argc, char **argv) {
    CHECK(argc == 2);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strcmp(argv[1], cases[i].name) == 0) {
            /* Some allocation first, so that the allocator is set up with chunks of its own. */
            void *warm = malloc(1000);
            cases[i].run();
            free(warm);
            puts("survived");
            return 0;
        }
    }
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
}
