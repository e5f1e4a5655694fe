/* Set-up paths: allocation from a constructor, fork handlers of the program that allocate,
 * blocks allocated inside libc and freed by the program, and thread-local storage set up
 * while modules with TLS are loaded (glibc grows each thread's TLS vector with malloc,
 * inside __tls_get_addr). One subcommand each; prints "ok" and exits 0 on success. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* ---- constructor: allocation before main, in every function. */

static int constructor_ok;

__attribute__((constructor)) static void allocate_early(void) {
    char *text = malloc(100);
    void *zeroed = calloc(10, 10);
    void *aligned = NULL;
    if (text == NULL || zeroed == NULL || posix_memalign(&aligned, 256, 1000) != 0) return;
    strcpy(text, "early");
    text = realloc(text, 100000);
    if (text == NULL || strcmp(text, "early") != 0) return;
    free(text);
    free(zeroed);
    free(aligned);
    constructor_ok = 1;
}

static void constructor(void) { CHECK(constructor_ok); }

/* ---- atfork-handlers: the program's own fork handlers allocate, while threads allocate. */

static void *prepared;
static void prepare_handler(void) { prepared = malloc(777); }
static void parent_handler(void) {
    free(prepared);
    free(malloc(5000));
}
static void child_handler(void) {
    free(prepared);
    free(malloc(300000));
}

static atomic_int stop;
static void *busy_thread(void *argument) {
    (void)argument;
    uint64_t state = 77;
    while (!atomic_load(&stop)) free(malloc(16 + next_random(&state) % 100000));
    return NULL;
}

static void atfork_handlers(void) {
    CHECK(pthread_atfork(prepare_handler, parent_handler, child_handler) == 0);
    pthread_t threads[3];
    for (int i = 0; i < 3; i++) CHECK(pthread_create(&threads[i], NULL, busy_thread, NULL) == 0);
    for (int round = 0; round < 30; round++) {
        pid_t child = fork();
        CHECK(child >= 0);
        if (child == 0) {
            alarm(20);
            for (int i = 0; i < 1000; i++) free(malloc((size_t)i * 100 + 1));
            exit(0);
        }
        int status = 0;
        CHECK(waitpid(child, &status, 0) == child);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) CHECK(pthread_join(threads[i], NULL) == 0);
}

/* ---- libc-internal: memory libc allocates and the program frees (and the reverse). */

static void libc_internal(void) {
    char *copy = strdup("a string copied by libc");
    CHECK(copy != NULL && strcmp(copy, "a string copied by libc") == 0);
    free(copy);
    copy = strndup("abcdef", 3);
    CHECK(copy != NULL && strcmp(copy, "abc") == 0);
    free(copy);
    char *formatted = NULL;
    CHECK(asprintf(&formatted, "%d-%s-%0500d", 42, "x", 7) > 0);
    free(formatted);
    char *resolved = realpath("/", NULL);
    CHECK(resolved != NULL && strcmp(resolved, "/") == 0);
    free(resolved);
    char *buffer = NULL;
    size_t length = 0;
    FILE *stream = open_memstream(&buffer, &length);
    CHECK(stream != NULL);
    for (int i = 0; i < 10000; i++) fprintf(stream, "line %d\n", i);
    CHECK(fclose(stream) == 0 && length > 60000);
    free(buffer);
    /* getline grows a buffer the program allocated itself. */
    buffer = malloc(4);
    length = 4;
    stream = fmemopen("a long first line that does not fit four bytes\nsecond\n", 55, "r");
    CHECK(stream != NULL && getline(&buffer, &length, stream) > 4);
    fclose(stream);
    free(buffer);
    struct dirent **entries = NULL;
    int count = scandir("/", &entries, NULL, alphasort);
    CHECK(count > 2);
    for (int i = 0; i < count; i++) free(entries[i]);
    free(entries);
}

/* ---- glibc-malloc-unused: after threads, stdio, libc's own allocations and a fork, glibc's
 * allocator (whose statistics mallinfo2 reports; it is not replaced) has never been used:
 * every allocation of the process, the library's own included, went to the preloaded one. */

static void *strdup_thread(void *argument) { return strdup(argument); }

static void glibc_untouched(const char *where) {
    struct mallinfo2 info = mallinfo2();
    if (info.arena != 0 || info.hblkhd != 0 || info.uordblks != 0) {
        fprintf(stderr, "%s: glibc's malloc was used: arena %zu, mmapped %zu, in use %zu\n", where, info.arena,
                info.hblkhd, info.uordblks);
        exit(1);
    }
}

static void glibc_malloc_unused(void) {
    for (int i = 0; i < 1000; i++) free(malloc((size_t)i * 1000));
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&threads[i], NULL, strdup_thread, "copied in a thread") == 0);
    for (int i = 0; i < 4; i++) {
        void *copy = NULL;
        CHECK(pthread_join(threads[i], &copy) == 0);
        free(copy);
    }
    char *formatted = NULL;
    CHECK(asprintf(&formatted, "%s %d", "formatted", 42) > 0);
    free(formatted);
    FILE *file = tmpfile();
    CHECK(file != NULL);
    fprintf(file, "buffered output\n");
    fclose(file);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        free(malloc(100000));
        glibc_untouched("child");
        exit(0);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    glibc_untouched("parent");
}

/* ---- tls-modules: a thread started early allocates while the main thread loads modules
 * with thread-local storage and the thread then touches each module's TLS. */

static sem_t loaded, touched;
static long *(*getters[64])(void);
static int module_count;

static void *tls_thread(void *argument) {
    (void)argument;
    free(malloc(10));
    sem_wait(&loaded);
    for (int i = 0; i < module_count; i++) {
        void *block = malloc((size_t)i * 10 + 1);
        CHECK(block != NULL);
        long *slot = getters[i]();
        slot[0] = i;
        free(block);
        CHECK(getters[i]()[0] == i);
    }
    sem_post(&touched);
    return NULL;
}

static void tls_modules(const char *directory) {
    CHECK(sem_init(&loaded, 0, 0) == 0 && sem_init(&touched, 0, 0) == 0);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, tls_thread, NULL) == 0);
    DIR *listing = opendir(directory);
    CHECK(listing != NULL);
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL && module_count < 64) {
        if (strstr(entry->d_name, ".so") == NULL) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", directory, entry->d_name);
        void *module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (module == NULL) {
            fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
            exit(1);
        }
        getters[module_count] = (long *(*)(void))dlsym(module, "tls_slot");
        CHECK(getters[module_count] != NULL);
        getters[module_count]()[1] = 1;
        module_count++;
    }
    closedir(listing);
    CHECK(module_count >= 20);
    sem_post(&loaded);
    sem_wait(&touched);
    CHECK(pthread_join(thread, NULL) == 0);
    /* New threads get the grown vector from the start. */
    CHECK(pthread_create(&thread, NULL, tls_thread, NULL) == 0);
    sem_post(&loaded);
    sem_wait(&touched);
    CHECK(pthread_join(thread, NULL) == 0);
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    if (strcmp(argv[1], "constructor") == 0) {
        constructor();
    } else if (strcmp(argv[1], "atfork-handlers") == 0) {
        atfork_handlers();
    } else if (strcmp(argv[1], "libc-internal") == 0) {
        libc_internal();
    } else if (strcmp(argv[1], "glibc-malloc-unused") == 0) {
        glibc_malloc_unused();
    } else if (strcmp(argv[1], "tls-modules") == 0 && argc == 3) {
        tls_modules(argv[2]);
    } else {
        fprintf(stderr, "unknown test %s\n", argv[1]);
        return 2;
    }
    puts("ok");
    return 0;
}
